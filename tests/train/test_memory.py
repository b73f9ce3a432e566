"""The per-rank memory estimate against real things: the FSDP units `shard_model` makes (1.4B shapes on the
meta device), the tensors autograd saves for backward (tiny models on CPU), and the default strategy per
scale it implies."""

from __future__ import annotations

import pytest
import torch

from meshctl.models import build, count_params, resolve
from meshctl.specs.run import parse_run_spec
from meshctl.train.hparams import default_strategy
from meshctl.train.memory import activation_bytes, per_gpu_memory, root_unit_params, run_memory, single_use_layers
from meshctl.train.sharding import single_use_blocks

SHAPES_1_4B = ("pythia-1.4b", "pythia-1.4b-4+8R2+4-base", "pythia-1.4b-4+8R2+4-mesh", "pythia-1.4b-4+8+8+4-mesh")


@pytest.mark.parametrize("name", SHAPES_1_4B)
def test_fsdp_units_of_the_1_4b_shapes_on_meta_match_the_estimate(name):
    spec = resolve(name)
    with torch.device("meta"):
        model = build(spec, seed=0)
    blocks = single_use_blocks(model)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)
    assert len(blocks) == single_use_layers(spec)
    assert root == root_unit_params(spec)
    assert sum(p.numel() for p in model.parameters()) == count_params(spec).total
    if spec.family == "recursive":  # the shared core is gathered with the root
        assert {id(p) for p in model.core.parameters()} <= {id(p) for p in model.parameters()} - in_blocks


@pytest.mark.parametrize("name", ["tiny-64", "tiny-64-1+1R2+1-mesh", "tiny-256"])
def test_activation_estimate_within_15_percent_of_what_autograd_saves(name):
    spec = resolve(name)
    model = build(spec, seed=0)
    weights = {p.data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    batch = torch.randint(0, 4000, (4, 257), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch[:, :-1], targets=batch[:, 1:])
    measured = sum(saved.values())
    assert activation_bytes(spec, 4, 256, "32") == pytest.approx(measured, rel=0.15)


def test_1_4b_per_rank_memory_by_strategy_and_the_default_per_scale():
    spec = resolve("pythia-1.4b")
    p = count_params(spec).total
    est = {s: per_gpu_memory(spec, strategy=s, world_size=16, micro_batch=4, seq_len=4096, precision="bf16-mixed")
           for s in ("ddp", "ddp_zero1", "fsdp")}
    assert est["ddp"].optimizer == 8 * p and est["ddp_zero1"].optimizer == 8 * p // 16 == est["fsdp"].optimizer
    assert est["ddp"].params == est["ddp_zero1"].params == 4 * p and est["fsdp"].params == 4 * p // 16
    assert est["fsdp"].total < est["ddp_zero1"].total < est["ddp"].total < 0.85 * 80 * 2**30
    assert len({e.activations for e in est.values()}) == 1
    # the paper's ZeRO stage 0 wherever it fits: ddp to 1.4B, then optimizer sharding, then FSDP
    chosen = {}
    for scale in ("pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "pythia-2.8b", "pythia-6.9b"):
        run = parse_run_spec({"model": scale, "data": {"path": "/data"}, "train": {"devices": 8, "num_nodes": 2}})
        resolved = run.resolved()
        chosen[scale] = resolved.train.strategy
        t = resolved.train
        assert chosen[scale] == default_strategy(resolved.model_spec(), 16, t.micro_batch, 4096, "bf16-mixed")
        assert run_memory(resolved).total <= 0.85 * 80 * 2**30
    assert chosen == {"pythia-160m": "ddp", "pythia-410m": "ddp", "pythia-1b": "ddp", "pythia-1.4b": "ddp",
                      "pythia-2.8b": "ddp_zero1", "pythia-6.9b": "fsdp"}
    one = parse_run_spec({"model": "pythia-6.9b", "data": {"path": "/data"}}).resolved()
    assert one.train.strategy == "auto"  # one device: nothing to shard over


def _optimizer_state_worker(rank: int, world: int, init_file: str, queue) -> None:
    """One AdamW step of tiny-256 under ZeRO-1 (DDP) and under FSDP; the bytes of AdamW state this rank holds."""
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    from meshctl.train.sharding import shard_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    spec = resolve("tiny-256-1+2R2+1-mesh")
    batch = torch.randint(0, 4000, (2, 33), generator=torch.Generator().manual_seed(rank))

    def state_bytes(optimizer: torch.optim.Optimizer) -> int:
        tensors = [t for s in optimizer.state.values() for k, t in s.items() if k != "step"]
        return sum((t.to_local() if hasattr(t, "to_local") else t).numel() * t.element_size() for t in tensors)

    ddp = DistributedDataParallel(build(spec, seed=0))
    zero = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-3)
    ddp(batch[:, :-1], targets=batch[:, 1:]).backward()
    zero.step()
    fsdp = shard_model(build(spec, seed=0), dist.device_mesh.init_device_mesh("cpu", (world,)))
    adamw = torch.optim.AdamW(fsdp.parameters(), lr=1e-3)
    fsdp(batch[:, :-1], targets=batch[:, 1:]).backward()
    adamw.step()
    queue.put((rank, state_bytes(zero.optim), state_bytes(adamw)))
    dist.destroy_process_group()


@pytest.mark.slow
def test_zero1_and_fsdp_hold_their_share_of_adamw_state_per_rank(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_optimizer_state_worker, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    spec = resolve("tiny-256-1+2R2+1-mesh")
    estimate = {s: per_gpu_memory(spec, strategy=s, world_size=2, micro_batch=2, seq_len=32, precision="32").optimizer
                for s in ("ddp", "ddp_zero1", "fsdp")}
    zero, fsdp = [g[1] for g in got], [g[2] for g in got]
    assert sum(zero) == estimate["ddp"]  # ZeRO-1 splits whole tensors: every state once over the ranks...
    for share in zero:  # ...about evenly (a greedy split by size)
        assert share == pytest.approx(estimate["ddp_zero1"], rel=0.1)
    for share in fsdp:  # FSDP splits every tensor along dim 0 (padded): half each
        assert share == pytest.approx(estimate["fsdp"], rel=0.01)

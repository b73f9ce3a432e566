"""FSDP2 over 2 CPU processes (gloo) for every family: the same losses and gradients as one process, the
shared core gathered once per forward whatever the loop count, exact resume, and a checkpoint that
`meshctl eval` reads on one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from typer.testing import CliRunner

from meshctl.train.rundir import read_metrics
from tests.train.test_training import _train_cli, _wait_for_step

FAMILIES = (
    "tiny-64",  # vanilla
    "tiny-64-1+1R2+1-base",
    "tiny-64-1+1R2+1-anchor",
    {"preset": "tiny-64-1+1R2+1-base", "recurrence": "static_comb"},
    {"preset": "tiny-64-1+1R2+1-base", "recurrence": "dynamic_comb"},
    "tiny-64-1+1R2+1-mesh",
    {"preset": "tiny-64-1+1R2+1-mesh", "structure": "1+1R3+1", "n_loop": 3, "n_layer": 5},  # 3 applications
    {"preset": "tiny-64-1+1R2+1-mesh", "family": "vanilla_mesh"},
)


def _counting(name: str, counts: dict[str, int]):
    original = getattr(dist, name)

    def wrapped(*args, **kwargs):
        counts[name] += 1
        return original(*args, **kwargs)

    return original, wrapped


def _family_worker(rank: int, world: int, init_file: str, queue) -> None:
    from meshctl.models import build, resolve
    from meshctl.train.sharding import shard_model, single_use_blocks

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = dist.device_mesh.init_device_mesh("cpu", (world,))
    out = []
    for model in FAMILIES:
        spec = resolve(model)
        reference = build(spec, seed=0)
        batch = torch.randint(0, spec.vocab_size, (4, 17), generator=torch.Generator().manual_seed(1))
        ref_loss = reference(batch[:, :-1], targets=batch[:, 1:])
        ref_loss.backward()

        sharded = shard_model(build(spec, seed=0), mesh)
        units = len(single_use_blocks(sharded)) + 1
        counts = {"all_gather_single": 0, "reduce_scatter_single": 0}
        patched = {n: _counting(n, counts) for n in counts}
        for n, (_, wrapped) in patched.items():
            setattr(dist, n, wrapped)
        try:
            mine = batch[rank * 2:(rank + 1) * 2]  # this rank's half; FSDP averages the gradients over ranks
            loss = sharded(mine[:, :-1], targets=mine[:, 1:])
            gathers_forward = counts["all_gather_single"]
            loss.backward()
        finally:
            for n, (original, _) in patched.items():
                setattr(dist, n, original)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters()}
        worst = max(
            float((grads[n] - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-30))
            for n, p in reference.named_parameters()
        )
        core = [n for n in grads if n.startswith(("core.", "cores."))]
        out.append({
            "model": str(model), "units": units, "gathers_forward": gathers_forward, "counts": dict(counts),
            "loss": float(mean_loss / world), "ref_loss": float(ref_loss), "worst_grad_rel": worst,
            "core_params": len(core), "same_names": sorted(grads) == sorted(n for n, _ in reference.named_parameters()),
        })
    if rank == 0:
        queue.put(out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_every_family_under_fsdp_matches_one_process_and_gathers_the_core_once():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_family_worker, args=(r, 2, f"{tmp}/init", queue)) for r in range(2)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 240
        while queue.empty():  # a rank that dies fails the test at once instead of at the timeout
            assert all(p.exitcode in (None, 0) for p in procs), [p.exitcode for p in procs]
            assert time.monotonic() < deadline, "the ranks did not finish"
            time.sleep(0.1)
        results = queue.get()
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    assert len(results) == len(FAMILIES)
    for r in results:
        assert r["same_names"], r
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5), r
        # the gradients of every weight, the shared core's the sum over its applications, as one process
        assert r["worst_grad_rel"] < 1e-5, r
        # one all-gather per unit and forward, one reduce-scatter per unit and backward: a shared core looped
        # 2 or 3 times lives in the root unit and is gathered and reduced once
        assert r["gathers_forward"] == r["units"], r
        assert r["counts"] == {"all_gather_single": 2 * r["units"] - 1, "reduce_scatter_single": r["units"]}, r
    by_model = {r["model"]: r for r in results}
    assert by_model["tiny-64"]["units"] == 1 + 4  # every vanilla layer its own unit
    assert by_model["tiny-64-1+1R2+1-mesh"]["units"] == 1 + 2  # prelude + coda; the core in the root
    assert by_model[str(FAMILIES[6])]["units"] == 1 + 2  # 3 loops: still one gather of the core
    assert by_model[str(FAMILIES[-1])]["units"] == 1 + 4  # vanilla_mesh: distinct cores, each a unit
    assert by_model["tiny-64-1+1R2+1-mesh"]["core_params"] > 0


def _train(spec_path: Path, run_dir: Path) -> subprocess.Popen:
    # its own session: Lightning's second rank is a child, and a kill must take both
    return _train_cli(spec_path, run_dir, new_session=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)["final"]


def _kill_after_step(proc: subprocess.Popen, metrics: Path, step: int) -> None:
    _wait_for_step(proc, metrics, step, timeout=180)
    os.killpg(proc.pid, signal.SIGSTOP)  # freeze both ranks at once, then kill them
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


@pytest.mark.slow
def test_fsdp_and_zero1_training_match_one_process_fsdp_resumes_exactly_and_evaluates_on_one(small_spec, tmp_path):
    """`meshctl train` with strategy fsdp on 2 CPU processes: 16 steps of the tiny MeSH model, each step's
    loss as one process's (rel 1e-5); killed after its step-8 checkpoint and resumed, the same trajectory
    as the uninterrupted FSDP run; its last.ckpt evaluates with `meshctl eval` on one process. ddp_zero1
    on 2 processes: the same losses, its sharded optimizer states whole in the checkpoint."""
    from meshctl.analysis.loading import load_run
    from meshctl.cli.app import app

    runs = {}
    for name, extra in (("one", {}), ("fsdp", {"strategy": "fsdp", "devices": 2}),
                        ("zero1", {"strategy": "ddp_zero1", "devices": 2})):
        spec = small_spec("tiny-64-1+1R2+1-mesh", max_steps=16, global_batch=8, micro_batch=2, log_every=1,
                          val_every=8, val_batches=2, ckpt_every=8, **extra)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    one = _train(tmp_path / "one.yaml", tmp_path / "one")
    killed = _train(tmp_path / "fsdp.yaml", tmp_path / "killed")
    _kill_after_step(killed, tmp_path / "killed" / "metrics.jsonl", 10)
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "killed" / "final.json").exists()
    runs["one"] = _finish(one)
    fsdp, zero1 = _train(tmp_path / "fsdp.yaml", tmp_path / "fsdp"), _train(tmp_path / "zero1.yaml", tmp_path / "zero1")
    runs["fsdp"], runs["zero1"] = _finish(fsdp), _finish(zero1)
    resumed = _train(tmp_path / "fsdp.yaml", tmp_path / "killed")
    runs["resumed"] = _finish(resumed)

    records = {name: read_metrics(tmp_path / ("killed" if name == "resumed" else name)) for name in runs}
    assert [r["step"] for r in records["fsdp"]] == [r["step"] for r in records["zero1"]] == list(range(1, 17))
    for a, b, c, z in zip(records["one"], records["fsdp"], records["resumed"], records["zero1"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), a["step"]
        assert z["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), a["step"]
        assert c["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=0), a["step"]
        assert b["lr"] == a["lr"] == c["lr"]
    assert runs["fsdp"]["val_loss"] == pytest.approx(runs["one"]["val_loss"], rel=1e-5)
    assert runs["resumed"]["val_loss"] == pytest.approx(runs["fsdp"]["val_loss"], rel=1e-6)

    # ZeRO-1's sharded AdamW states are consolidated into the checkpoint: one entry per weight
    zero_ckpt = torch.load(tmp_path / "zero1" / "checkpoints" / "last.ckpt", weights_only=False)
    n_weights = sum(1 for p in load_run(tmp_path / "zero1").model.parameters() if p.requires_grad)
    assert len(zero_ckpt["optimizer_states"][0]["state"]) == n_weights

    # the checkpoint is a full state dict: one process loads it with the unsharded model's names
    loaded, single = load_run(tmp_path / "fsdp"), load_run(tmp_path / "one")
    assert loaded.step == 16
    reference = dict(single.model.named_parameters())
    for name, p in loaded.model.named_parameters():
        assert not hasattr(p, "full_tensor")
        # AdamW moves an element whose gradient is ~0 by up to lr per step in either direction, so a few
        # of 500k embedding entries differ by ~1e-4 between reduction orders; the function is the same
        torch.testing.assert_close(p, reference[name], rtol=0, atol=1e-3)
    batch = torch.randint(0, 4096, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch), single.model(batch), rtol=1e-4, atol=1e-4)
    out = CliRunner().invoke(app, ["eval", str(tmp_path / "fsdp"), "--tasks", "offline", "--limit", "10",
                                   "--device", "cpu", "--format", "json"])
    assert out.exit_code == 0, out.output
    docs = json.loads(out.stdout)["results"]
    assert docs and all(d["run_id"] == (tmp_path / "fsdp").name or "task" in d for d in docs)
    assert sorted(p.name for p in (tmp_path / "fsdp" / "eval").glob("*.json")) == sorted(
        f"{d['task']}.json" for d in docs)

"""Multi-device strategies: FSDP2 (`fully_shard`) that gathers a looped core once per step, and ZeRO-1.

Sharding units (`shard_model`). FSDP2 all-gathers a unit's parameters in the unit's pre-forward hook and
again in its pre-backward hook after resharding. A shared core made a unit of its own is therefore
gathered once per *application*, in forward and in backward: measured on the tiny 1+1R2+1 MeSH model
(tests/train/test_fsdp.py's counter), 9 all-gathers per step instead of 5 with 2 loops, 11 instead of 5
with 3. So the shared core is left in the root unit, with the embeddings, the final norm, the LM head and
the recurrence's routers (which the model reads as `.weight` without calling the router, so they must be
gathered with the root anyway). The root is gathered once at the start of the forward, kept through it
(FSDP2 never reshards the root after forward) and reduce-scattered once, from the root's post-backward
callback, after autograd has summed every loop's gradient into it: one gather and one reduce-scatter per
step whatever the loop count. Every layer that runs once per forward (vanilla layers, prelude, coda,
vanilla_mesh's distinct cores) is its own unit, resharded after forward as usual. The price: the core stays unsharded from the
first layer's forward to the end of backward, which a one-gather schedule needs in any case.

Lightning: its `fsdp` strategy (FSDP1) refuses a CPU accelerator; `ModelParallelStrategy` runs FSDP2 on
any device (gloo on CPU) and calls `LMModule.configure_model`, which applies `shard_model`. Checkpoints are
full state dicts (`save_distributed_checkpoint=False`): rank 0 writes one `last.ckpt` with the same keys
as an unsharded run, so resume, `meshctl eval` and `meshctl export` read it on one process unchanged; the
cost is gathering the full weights and AdamW states to rank 0's CPU memory at each checkpoint.

`ddp_zero1`: DDP with `torch.distributed.optim.ZeroRedundancyOptimizer` (AdamW states sharded over ranks,
weights and gradients replicated); Lightning consolidates the states on rank 0 to checkpoint them.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def lightning_strategy(name: str, world_size: int) -> Any:
    """The Lightning strategy for `train.strategy` over `world_size` ranks."""
    if name == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        # every rank data-parallel, no tensor parallelism ("auto" would make it one rank per node)
        return ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1,
                                     save_distributed_checkpoint=False)
    return "ddp" if name == "ddp_zero1" else name


def single_use_blocks(model: nn.Module) -> list[nn.Module]:
    """The layers a forward runs once: all but a shared core's."""
    from meshctl.models.block import Block

    shared = getattr(model, "core", None) if getattr(model.spec, "shares_core", False) else None
    skip = {id(m) for m in shared.modules()} if shared is not None else set()
    return [m for m in model.modules() if isinstance(m, Block) and id(m) not in skip]


def shard_model(model: nn.Module, mesh: Any) -> nn.Module:
    """Apply FSDP2 in place: one unit per single-use layer, the root (embeddings, head, shared core,
    routers) last; see the module docstring for why the core is in the root."""
    from torch.distributed.fsdp import fully_shard

    for block in single_use_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)

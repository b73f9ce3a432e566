"""Per-GPU memory of a training run under each strategy: an analytic estimate, torch-free (the planner's).

What a rank holds, in bytes (the paper's recipe: AdamW, fp32 master weights; Lightning's `bf16-mixed` is
autocast, so weights, gradients and AdamW's two moments stay fp32 and only activations are 16-bit):

- `ddp` (ZeRO stage 0, the paper's): weights 4P, gradients 4P, DDP's gradient buckets 4P (a copy unless
  `gradient_as_bucket_view`), AdamW 8P.
- `ddp_zero1`: the same with AdamW's 8P split over the N ranks (ZeroRedundancyOptimizer).
- `fsdp` (FSDP2 as `meshctl.train.sharding` applies it): weights, gradients and AdamW each split over N,
  plus the working set: the root unit (embeddings, head, shared core, routers) gathered for the whole
  step with its unsharded gradients, and two single-use layers gathered at a time (one computing, one
  prefetched) with one layer's unsharded gradients.

Activations (all strategies, no recomputation, SDPA without the seq x seq matrix): per token and layer
application a GPT-NeoX layer keeps 16 d-sized tensors for backward (the block's input, two LayerNorm
outputs, the rotated q k v and the attention output, the dense input, the MLP's 4d pre- and post-GELU),
counted at the activation width (2 bytes in bf16-mixed, 4 in fp32); plus 2 per token for the embedding
output and the head's input. A shared core looped K times keeps K sets. This is an estimate (+-20%:
LayerNorm outputs are fp32 under autocast, allocator slack and temporaries are not counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshctl.models.counting import count_params, layer_params

# AdamW in fp32: weights, gradients, DDP buckets 4 bytes each; exp_avg + exp_avg_sq 8
WEIGHT, GRAD, ADAM = 4, 4, 8
SAVED_PER_LAYER = 16  # d-sized tensors kept for backward per token and layer application
SAVED_OUTSIDE = 2  # embedding output, head input


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank. `buffers`: DDP's gradient buckets, or FSDP's gathered working set."""

    strategy: str
    world_size: int
    params: int
    grads: int
    optimizer: int
    buffers: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.buffers + self.activations


def root_unit_params(spec: Any) -> int:
    """Parameters FSDP keeps in the root unit: all but the single-use layers (a shared core stays in)."""
    return count_params(spec).total - single_use_layers(spec) * layer_params(spec)


def single_use_layers(spec: Any) -> int:
    """Layers a forward runs once: a vanilla model's, or prelude + coda (+ the distinct cores)."""
    if spec.family == "vanilla":
        return spec.n_layer
    cores = 0 if spec.shares_core else spec.n_core * spec.n_loop
    return spec.n_prelude + spec.n_coda + cores


def activation_bytes(spec: Any, micro_batch: int, seq_len: int, precision: str) -> int:
    width = 2 if precision == "bf16-mixed" else 4
    per_token = (SAVED_PER_LAYER * spec.n_unrolled + SAVED_OUTSIDE) * spec.n_embd
    return micro_batch * seq_len * per_token * width


def per_gpu_memory(spec: Any, *, strategy: str, world_size: int, micro_batch: int, seq_len: int,
                   precision: str) -> MemoryEstimate:
    """The estimate for one rank of `world_size` training `spec` (a ModelSpec) under `strategy`."""
    p = count_params(spec).total
    n = max(world_size, 1)
    act = activation_bytes(spec, micro_batch, seq_len, precision)
    if strategy == "fsdp":
        root = root_unit_params(spec)
        layer = layer_params(spec) if single_use_layers(spec) else 0  # a single-use layer's working set
        gathered = (root + 2 * layer) * WEIGHT
        unsharded_grads = (root + layer) * GRAD
        return MemoryEstimate(strategy, n, WEIGHT * p // n, GRAD * p // n, ADAM * p // n,
                              gathered + unsharded_grads, act)
    optimizer = ADAM * p // n if strategy == "ddp_zero1" else ADAM * p
    buckets = GRAD * p if n > 1 else 0  # one device: no DDP, no buckets
    return MemoryEstimate(strategy, n, WEIGHT * p, GRAD * p, optimizer, buckets, act)


def run_memory(spec: Any, strategy: str | None = None, model: Any = None) -> MemoryEstimate:
    """The estimate for a resolved RunSpec (its strategy, devices x nodes, micro-batch, seq_len, precision);
    `model`: its ModelSpec when the caller has it already (the planner counts each cell's once)."""
    t = spec.train
    name = strategy or (t.strategy if t.strategy != "auto" else "ddp")
    return per_gpu_memory(model or spec.model_spec(), strategy=name, world_size=t.world_size,
                          micro_batch=t.micro_batch, seq_len=spec.data.seq_len, precision=t.precision)

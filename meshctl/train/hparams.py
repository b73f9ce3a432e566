"""Training hyperparameters per scale: the MeSH paper's recipe for its Pythia scales, CPU defaults for tiny.

Sources (shared/reference/mesh-paper.md §3, pythia-data-flops.md §4.2):
- MeSH paper App. B: seq 4096, global batch 512 sequences, AdamW (0.9, 0.95), weight decay 0.01,
  cosine decay with 1% warmup to 10% of peak, bf16 mixed precision, 250B tokens (1 epoch of the deduped
  Pile; the 1.4B run is 120,818 steps ~= 253.4B tokens). Peak LR 6e-4 at 160M and 2e-4 at 1.4B.
- The paper does not give the 70M/410M/1B learning rates; these are Pythia's (gpt-neox configs/pythia):
  70m 1e-3, 410m 3e-4, 1b 2.5e-4. Pythia-1B's config and gpt-neox's both say 2.5e-4 while the Pythia
  README table says 3e-4; the config is what ran, so 2.5e-4 it is.
- The paper's v2 adds 2.8B and 6.9B without their recipe: Pythia's, 2.8b 1.6e-4 and 6.9b 1.2e-4
  (min_lr 0.1x as everywhere here), with the paper's batch, sequence length and token budget.
- Micro-batches are not in the paper (DeepSpeed ZeRO-0, hardware not stated): the values below are a
  starting point for an 80 GB GPU in bf16 at seq 4096; gradient accumulation makes up the global batch.

The table is keyed by scale preset. A model is matched to a scale by its shape (width, heads, unrolled
depth), never by its name, so every recursive variant of a scale (matched compute: same width and
unrolled depth) gets its scale's recipe, whatever its vocabulary. A model of no preset's shape must set
lr, seq_len, global_batch and tokens/max_steps itself; it gets `GENERIC` for the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from meshctl.models import ModelSpec
from meshctl.models.presets import SCALES

PAPER_TOKENS = 250_000_000_000


@dataclass(frozen=True)
class ScaleHparams:
    lr: float
    seq_len: int
    global_batch: int  # sequences
    micro_batch: int
    tokens: int
    precision: str
    log_every: int
    val_every: int
    val_batches: int
    ckpt_every: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _paper(lr: float, micro_batch: int) -> ScaleHparams:
    return ScaleHparams(
        lr=lr, seq_len=4096, global_batch=512, micro_batch=micro_batch, tokens=PAPER_TOKENS,
        precision="bf16-mixed", log_every=10, val_every=1000, val_batches=50, ckpt_every=500,
    )


def _cpu(lr: float) -> ScaleHparams:
    # 2048 tokens per step: ~0.1-0.3 s/step on 2 cores (offline-data.md §5); 1M tokens = 489 steps.
    return ScaleHparams(
        lr=lr, seq_len=128, global_batch=16, micro_batch=16, tokens=1_000_000,
        precision="32", log_every=10, val_every=100, val_batches=16, ckpt_every=100,
    )


HPARAMS: dict[str, ScaleHparams] = {
    "pythia-70m": _paper(1.0e-3, micro_batch=16),
    "pythia-160m": _paper(6.0e-4, micro_batch=16),
    "pythia-410m": _paper(3.0e-4, micro_batch=8),
    "pythia-1b": _paper(2.5e-4, micro_batch=4),  # Pythia README says 3e-4; its config says 2.5e-4
    "pythia-1.4b": _paper(2.0e-4, micro_batch=4),
    "pythia-2.8b": _paper(1.6e-4, micro_batch=2),
    "pythia-6.9b": _paper(1.2e-4, micro_batch=1),  # its AdamW states alone exceed 80 GB: default fsdp
    "tiny-64": _cpu(3.0e-3),
    "tiny-128": _cpu(2.0e-3),
    "tiny-256": _cpu(1.0e-3),
}


def _shape(spec: ModelSpec) -> tuple[int, int, int]:
    return (spec.n_embd, spec.n_head, spec.n_unrolled)


def scale_of(spec: ModelSpec) -> str | None:
    """The scale preset whose width, heads and unrolled depth match `spec` (any vocab), or None."""
    for name, base in SCALES.items():
        if _shape(base) == _shape(spec):
            return name
    return None


# Bookkeeping defaults for models of no preset's shape (the recipe itself has no safe generic value).
GENERIC: dict[str, Any] = {"precision": "32", "log_every": 10, "val_every": 500, "val_batches": 16, "ckpt_every": 500}


def defaults_for(spec: ModelSpec) -> dict[str, Any]:
    """Default hyperparameters for `spec`: its scale's recipe, or only GENERIC when it matches no scale."""
    scale = scale_of(spec)
    return HPARAMS[scale].as_dict() if scale is not None else dict(GENERIC)


# Multi-device default: the least sharding that fits. The paper trained with ZeRO stage 0 (plain DDP);
# meshctl.train.memory's per-rank estimate decides when that stops fitting an 80 GB GPU with 15% left for
# the allocator, the CUDA context and temporaries. At 16 ranks and the recipe's micro-batches, seq 4096:
# ddp up to 1.4B (50.5 GB), ddp_zero1 at 2.8B (71.8 -> 52.4 GB), fsdp at 6.9B (143.8 -> 95.9 -> 27.8 GB).
GPU_MEMORY = 80 * 2**30
USABLE = 0.85
BY_SHARDING = ("ddp", "ddp_zero1", "fsdp")


def default_strategy(spec: ModelSpec, world_size: int, micro_batch: int, seq_len: int, precision: str) -> str:
    """`train.strategy` for a multi-device run left at `auto`: the first of ddp, ddp_zero1, fsdp whose
    estimated per-rank memory fits the budget (fsdp when none does)."""
    from meshctl.train.memory import per_gpu_memory

    for name in BY_SHARDING:
        estimate = per_gpu_memory(spec, strategy=name, world_size=world_size, micro_batch=micro_batch,
                                  seq_len=seq_len, precision=precision)
        if estimate.total <= USABLE * GPU_MEMORY:
            return name
    return BY_SHARDING[-1]

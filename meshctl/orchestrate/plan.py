"""`meshctl sweep --dry-run`: what a sweep will cost, one row per run, before anything is submitted.

GPU-hours = total training FLOPs / (peak FLOP/s of the chip at the run's precision x assumed MFU) / 3600,
with FLOPs from the counting module's "palm" formula (matmuls incl. LM head and attention), the same one
MFU is measured with during training. Memory per GPU is meshctl.train.memory's analytic estimate for the
run's strategy (a multi-device `auto` run has been resolved to the scale's default by then).
"""

from __future__ import annotations

from typing import Any

from meshctl.models.counting import count_params, flops_per_token
from meshctl.specs.sweep import PlannedRun
from meshctl.train.hardware import PEAK_FLOPS, precision_kind
from meshctl.train.memory import run_memory

FLOP_FORMULA = "palm"


def plan_rows(planned: list[PlannedRun], gpu: str = "h100-sxm", mfu: float = 0.4) -> list[dict[str, Any]]:
    if gpu not in PEAK_FLOPS:
        raise ValueError(f"--gpu: unknown chip {gpu!r}; choose one of {', '.join(PEAK_FLOPS)}")
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu: {mfu} is not in (0, 1]; a typical assumption is 0.3-0.5")
    rows = []
    counted: dict[tuple[int, int], tuple[Any, float]] = {}  # a cell's seeds share one model spec: count it once
    memory: dict[tuple[Any, ...], Any] = {}
    for run in planned:
        spec = run.spec
        model = run.extra.get("model_spec") or spec.model_spec()
        key = (id(model), spec.data.seq_len)
        if key not in counted:
            counted[key] = (count_params(model), flops_per_token(model, spec.data.seq_len, FLOP_FORMULA))
        counts, fpt = counted[key]
        tokens = spec.train.max_steps * spec.tokens_per_step
        total = fpt * tokens
        peak = PEAK_FLOPS[gpu][precision_kind(spec.train.precision)]
        t = spec.train
        gpus = t.world_size
        mem_key = (key, t.strategy, gpus, t.micro_batch, t.precision)
        if mem_key not in memory:
            memory[mem_key] = run_memory(spec, model=model)
        rows.append({
            "run_id": run.run_id,
            **{k: run.labels.get(k) for k in ("group", "variant", "family", "structure", "seed")},
            "recurrence": model.recurrence if model.family != "vanilla" else None,
            "params_non_embedding": counts.non_embedding,
            "params_unrolled_non_embedding": counts.unrolled_non_embedding,
            "flop_formula": FLOP_FORMULA,
            "flops_per_token": fpt,
            "tokens": tokens,
            "steps": spec.train.max_steps,
            "total_flops": total,
            "gpus": gpus,
            "gpu_hours": total / (peak * mfu) / 3600.0,
            "strategy": memory[mem_key].strategy if gpus > 1 else None,
            "gpu_memory_gib": memory[mem_key].total / 2**30,
            "resources": run.resources,
        })
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "total_flops": sum(r["total_flops"] for r in rows),
        "gpu_hours": sum(r["gpu_hours"] for r in rows),
    }

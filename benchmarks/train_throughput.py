"""Training-step throughput on CPU: tokens/s of forward + backward + clip + AdamW step of `LMModule`
(the code the Trainer runs, without the Trainer, whose overhead is negligible: offline-data.md §5), for a
tiny model and a Pythia-160M-shaped one at a short sequence, each as vanilla, recursive base and MeSH.

    python benchmarks/train_throughput.py [--quick]

Prints a table and writes benchmarks/results/train_throughput.json with the machine it ran on. Random
token ids: throughput does not depend on the text. tokens/s is from the fastest timed step (best-of-N:
on a shared machine the median mostly measures the neighbours; both are recorded, with the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from meshctl.models import count_params, flops_per_token, resolve
from meshctl.specs.run import parse_run_spec
from meshctl.train.module import LMModule
from machine import cpu_model  # benchmarks/machine.py

# (preset, seq_len, micro-batch, timed steps): tiny at the CPU demo's shape, 160m short and small.
CASES = [
    ("tiny-128", 128, 16, 10),
    ("tiny-128-1+1R2+1-base", 128, 16, 10),
    ("tiny-128-1+1R2+1-mesh", 128, 16, 10),
    ("pythia-160m", 128, 2, 4),
    ("pythia-160m-2+4R2+2-base", 128, 2, 4),
    ("pythia-160m-2+4R2+2-mesh", 128, 2, 4),
]


def bench(preset: str, seq_len: int, batch: int, steps: int, warmup: int = 1) -> dict[str, object]:
    spec = parse_run_spec({
        "model": preset, "data": {"path": "unused", "seq_len": seq_len},
        "train": {"max_steps": 1000, "global_batch": batch, "micro_batch": batch, "lr": 1e-4, "precision": "32"},
    }).resolved()
    module = LMModule(spec)
    optimizer = module.configure_optimizers()["optimizer"]
    model_spec = resolve(preset)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model_spec.vocab_size, (batch, seq_len + 1), generator=generator) for _ in range(2)]
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        window = batches[i % 2]
        loss = module.model(window[:, :-1], targets=window[:, 1:])  # as LMModule.training_step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s, best_s = statistics.median(times), min(times)
    tokens = batch * seq_len
    fpt = flops_per_token(model_spec, seq_len, "palm")
    return {
        "model": preset,
        "family": model_spec.family,
        "structure": model_spec.structure,
        "recurrence": model_spec.recurrence if model_spec.family != "vanilla" else None,
        "params_unique": count_params(model_spec).unique,
        "seq_len": seq_len,
        "batch": batch,
        "tokens_per_step": tokens,
        "steps_timed": steps,
        "step_s_best": best_s,
        "step_s_median": step_s,
        "tokens_per_s": tokens / best_s,
        "tokens_per_s_median": tokens / step_s,
        "flops_per_token_palm": fpt,
        "gflops_per_s": fpt * tokens / best_s / 1e9,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = [c for c in CASES if not args.quick or c[0].startswith("tiny")]
    started = time.perf_counter()
    rows = []
    for case in cases:
        rows.append(bench(*case))
        r = rows[-1]
        print(f"  {r['model']:<28} {r['tokens_per_s']:>9.0f} tok/s  {r['step_s_best']:.3f} s/step (best)", flush=True)
    machine = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "precision": "fp32",
    }
    document = {"benchmark": "train_throughput", "machine": machine, "results": rows,
                "wall_s": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training step throughput, CPU fp32 ({machine['cpu']}, {machine['torch_threads']} threads)")
    for header in ("model", "params", "seq x batch", "s/step best", "s/step median", "tokens/s", "GFLOP/s (palm)"):
        table.add_column(header, justify="left" if header == "model" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["model"], f"{r['params_unique'] / 1e6:.1f}M", f"{r['seq_len']} x {r['batch']}",
                      f"{r['step_s_best']:.3f}", f"{r['step_s_median']:.3f}", f"{r['tokens_per_s']:,.0f}",
                      f"{r['gflops_per_s']:.1f}")
    Console(width=120).print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

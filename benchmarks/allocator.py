"""CPU training step with glibc malloc keeping freed memory (meshctl/train/allocator.py) vs its default.

    python benchmarks/allocator.py [--rounds N]

The setting is process-wide, so each measurement is a child process running train_throughput's step
(LMModule's model, loss, clip and AdamW); the two settings alternate for N rounds and the ratio is the
median over rounds of default / kept step time (best of the child's timed steps). Writes
benchmarks/results/allocator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model, positive  # benchmarks/machine.py

CASES = [("tiny-256", 256, 8, 6), ("pythia-160m", 128, 2, 3)]  # the shapes of benchmarks/speed.py


def child(preset: str, seq: int, batch: int, steps: int, keep: bool) -> None:
    import torch

    from meshctl.train.allocator import keep_freed_memory
    from train_throughput import bench  # benchmarks/train_throughput.py

    kept = keep_freed_memory() if keep else False
    torch.set_num_threads(2)
    print(json.dumps({"kept": kept, **bench(preset, seq, batch, steps)}))


def measure(case: tuple[str, int, int, int], keep: bool) -> dict:
    args = [sys.executable, __file__, "--child", *map(str, case), "keep" if keep else "default"]
    out = subprocess.run(args, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive, default=3, help="alternating rounds per case (>= 1)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "allocator.json")
    args = parser.parse_args()
    if args.child:
        preset, seq, batch, steps, mode = args.child
        return child(preset, int(seq), int(batch), int(steps), mode == "keep")
    started, rows = time.perf_counter(), []
    for case in CASES:
        pairs = []
        for i in range(args.rounds):
            order = (False, True) if i % 2 == 0 else (True, False)
            got = {keep: measure(case, keep) for keep in order}
            pairs.append((got[False]["step_s_best"], got[True]["step_s_best"]))
        row = {"model": case[0], "seq": case[1], "batch": case[2], "rounds": args.rounds,
               "default_step_s": statistics.median(a for a, _ in pairs),
               "kept_step_s": statistics.median(b for _, b in pairs),
               "speedup": statistics.median(a / b for a, b in pairs), "took_effect": got[True]["kept"]}
        rows.append(row)
        print(f"  {case[0]:<14} default {row['default_step_s']:.3f} s  kept {row['kept_step_s']:.3f} s  "
              f"speed-up {row['speedup']:.3f}x", flush=True)
    doc = {"benchmark": "allocator", "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": 2},
           "results": rows, "wall_s": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

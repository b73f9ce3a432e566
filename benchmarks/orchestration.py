"""Planning and status at scale: expand + plan a 10,000-run sweep; `status` over 1,000 runs.

Status reads the ledger and every run directory's metrics tail and asks the scheduler once; here the
runs are local-executor submissions (pid checks) with synthetic run directories of 500 metric lines.
Prints a table and writes benchmarks/results/orchestration.json.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

from machine import cpu_model  # benchmarks/machine.py
from meshctl.orchestrate.ledger import Ledger, Submission
from meshctl.orchestrate.plan import plan_rows
from meshctl.orchestrate.status import observe
from meshctl.specs.sweep import expand, parse_sweep

OUT = Path(__file__).parent / "results" / "orchestration.json"


def big_sweep(data: Path, seeds: int) -> dict:
    spec = yaml.safe_load(Path("sweeps/smoke.yaml").read_text())
    spec["data"]["path"] = str(data)
    spec["seeds"] = list(range(seeds))
    return spec


def bench_plan(n_seeds: int) -> dict:
    start = time.perf_counter()
    sweep = parse_sweep(big_sweep(Path("data/demo"), n_seeds))
    planned = expand(sweep)
    expanded = time.perf_counter()
    rows = plan_rows(planned)
    done = time.perf_counter()
    return {"runs": len(rows), "expand_s": expanded - start, "plan_s": done - expanded, "total_s": done - start}


def bench_status(n_runs: int, lines: int = 500) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        planned = expand(parse_sweep(big_sweep(root / "data", -(-n_runs // 8))))[:n_runs]
        with Ledger(root / "meshctl.sqlite") as ledger:
            runs = []
            for p in planned:
                run_dir = root / "runs" / p.run_id
                run_dir.mkdir(parents=True)
                with open(run_dir / "metrics.jsonl", "w") as f:
                    for step in range(1, lines + 1):
                        record = {"step": step, "tokens": step * 2048, "train_loss": 5.0, "tokens_per_s": 4000.0}
                        if step % 50 == 0:
                            record["val"] = {"validation": {"loss": 5.1, "perplexity": 164.0}}
                        f.write(json.dumps(record) + "\n")
                runs.append((p.run_id, p.spec.model_dump(mode="json"), run_dir, p.labels))
            ledger.register_sweep("big", "x", {}, None, runs)
            now = time.time()
            ledger.record_submissions(
                Submission(p.run_id, "local", str(10_000_000 + i), None, str(root / "jobs"), now)
                for i, p in enumerate(planned)
            )
            start = time.perf_counter()
            statuses = observe(ledger, "big")
            elapsed = time.perf_counter() - start
    return {"runs": len(statuses), "metric_lines_per_run": lines, "status_s": elapsed,
            "per_run_ms": 1000 * elapsed / len(statuses)}


def main() -> None:
    plan = bench_plan(1250)
    status = bench_status(1000)
    result = {"plan": plan, "status": status, "machine": {"python": sys.version.split()[0],
              "platform": platform.platform(), "cpu": cpu_model()}}
    print(f"{'benchmark':<34}{'runs':>8}{'seconds':>10}")
    print(f"{'expand + plan a sweep':<34}{plan['runs']:>8}{plan['total_s']:>10.2f}")
    print(f"{'status (ledger + run dirs + pids)':<34}{status['runs']:>8}{status['status_s']:>10.2f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {OUT}")


if __name__ == "__main__":
    main()

"""Planning and status at scale: expand + plan a 10,000-run sweep; `status` over 1,000 runs.

Status reads the ledger and every run directory's metrics tail and asks the scheduler once; here the
runs are local-executor submissions (pid checks) with synthetic run directories of 500 metric lines.
Targets (issue 14): expand + plan < 0.5 s, status < 0.25 s with one scheduler query. Each is set
against the per-run work the code did before (every run validated, dumped, hashed and counted; every
metrics line of a tail parsed), measured in the same process. Prints a table and writes
benchmarks/results/orchestration.json.
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
from meshctl.layout import _parse_all
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


def bench_plan(n_runs: int) -> dict:
    per_seed = len(expand(parse_sweep(big_sweep(Path("data/demo"), 1))))
    start = time.perf_counter()
    sweep = parse_sweep(big_sweep(Path("data/demo"), -(-n_runs // per_seed)))
    planned = expand(sweep)
    expanded = time.perf_counter()
    rows = plan_rows(planned)
    done = time.perf_counter()
    per_run = per_run_reference(planned[:1000]) * len(planned) / 1000
    return {"runs": len(rows), "expand_s": expanded - start, "plan_s": done - expanded, "total_s": done - start,
            "per_run_reference_s": per_run, "speedup": per_run / (done - start)}


def per_run_reference(planned: list) -> float:
    """Seconds for what expand + plan did for each run before: validate and resolve it, dump and hash
    it, resolve its model and count it."""
    from meshctl.models.counting import count_params, flops_per_token
    from meshctl.specs.hashing import run_id
    from meshctl.specs.run import RunSpec

    start = time.perf_counter()
    for p in planned:
        spec = RunSpec.model_validate({**p.spec.model_dump(mode="json"), "seed": p.spec.seed}).resolved()
        run_id(spec.model_dump(mode="json"))
        model = spec.model_spec()
        count_params(model)
        flops_per_token(model, spec.data.seq_len, "palm")
    return time.perf_counter() - start


def bench_status(n_runs: int, lines: int = 500) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_seed = len(expand(parse_sweep(big_sweep(root / "data", 1))))
        planned = expand(parse_sweep(big_sweep(root / "data", -(-n_runs // per_seed))))[:n_runs]
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
            queries = count_scheduler_queries()
            observe(ledger, "big")  # warm: the first refresh also records every state change
            queries.clear()
            start = time.perf_counter()
            statuses = observe(ledger, "big")
            elapsed = time.perf_counter() - start
            start = time.perf_counter()
            for p in planned:  # every line of every tail parsed, as status read them before
                data = (root / "runs" / p.run_id / "metrics.jsonl").read_bytes()[-64 * 1024:]
                _parse_all(data.decode("utf-8", "replace").splitlines())
            careful = time.perf_counter() - start
    return {"runs": len(statuses), "metric_lines_per_run": lines, "status_s": elapsed,
            "per_run_ms": 1000 * elapsed / len(statuses), "scheduler_queries": len(queries),
            "tails_parsed_whole_s": careful}


def count_scheduler_queries() -> list:
    """Calls of the local backend's `states` from now on (one per status refresh is the contract)."""
    from meshctl.orchestrate.backends import local

    calls: list = []
    states = local.LocalBackend.states

    def counted(self, submissions):  # type: ignore[no-untyped-def]
        calls.append(len(submissions))
        return states(self, submissions)

    local.LocalBackend.states = counted
    return calls


def main() -> None:
    plan = bench_plan(10_000)
    status = bench_status(1000)
    result = {"plan": plan, "status": status, "machine": {"python": sys.version.split()[0],
              "platform": platform.platform(), "cpu": cpu_model()}}
    print(f"{'benchmark':<44}{'runs':>8}{'seconds':>10}{'target':>9}")
    print(f"{'expand + plan a sweep':<44}{plan['runs']:>8}{plan['total_s']:>10.3f}{'< 0.5':>9}")
    print(f"{'  per-run validation, hash, count (before)':<44}{plan['runs']:>8}{plan['per_run_reference_s']:>10.3f}"
          f"{'':>9}  ratio {plan['speedup']:.1f}x")
    print(f"{'status (ledger + run dirs + pids)':<44}{status['runs']:>8}{status['status_s']:>10.3f}{'< 0.25':>9}"
          f"  scheduler queries: {status['scheduler_queries']}")
    print(f"{'  every tail line parsed (before), alone':<44}{status['runs']:>8}{status['tails_parsed_whole_s']:>10.3f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {OUT}")


if __name__ == "__main__":
    main()

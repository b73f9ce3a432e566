"""`meshctl cancel` and `meshctl resubmit`: act on runs found through the ledger, from any shell.

A cancellation is recorded in the run directory (`cancelled.json`, see `markers`) so it reads as cancelled whatever the
scheduler keeps: local jobs leave no record once their process is gone. A local job is a lane of runs;
cancelling one run stops its lane, and the lane's other unfinished runs read as incomplete (re-running
the sweep resumes them).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from meshctl.errors import BadInput
from meshctl.orchestrate.ledger import Ledger, Submission
from meshctl.orchestrate.markers import clear, write_cancelled
from meshctl.orchestrate.status import ACTIVE, observe

def _open(results_dir: Path) -> Ledger:
    from meshctl.orchestrate.submit import ledger_path

    path = ledger_path(results_dir)
    if not path.exists():
        raise BadInput(f"--results-dir: no ledger at {path}; point --results-dir (env MESHCTL_RESULTS) at your results")
    return Ledger(path)


def resolve_run(ledger: Ledger, prefix: str) -> str:
    matches = ledger.find_runs(prefix)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise BadInput(f"RUN: no run id starts with {prefix!r}; see `meshctl status` for run ids")
    raise BadInput(f"RUN: {prefix!r} matches {len(matches)} runs ({', '.join(matches[:4])}, ...); give more characters")


def cancel_runs(target: str, results_dir: Path) -> list[str]:
    with _open(results_dir) as ledger:
        run_ids = ([r.run_id for r in ledger.runs(target)] if ledger.sweep_spec(target) is not None
                   else [resolve_run(ledger, target)])
        statuses = [s for s in observe(ledger, record=False) if s.run_id in set(run_ids) and s.state in ACTIVE]
        subs = ledger.latest_submissions(s.run_id for s in statuses)
        slurm_jobs = sorted({subs[s.run_id].job_id for s in statuses if s.run_id in subs and subs[s.run_id].executor == "slurm"})
        if slurm_jobs:
            from meshctl.orchestrate.executors import cancel

            cancel(slurm_jobs)  # one scancel for all
        for job_id in sorted({subs[s.run_id].job_id for s in statuses if s.run_id in subs and subs[s.run_id].executor == "local"}):
            kill_tree(int(job_id))
        for s in statuses:
            write_cancelled(Path(s.run_dir))
        ledger.set_states({s.run_id: "cancelled" for s in statuses}, "meshctl cancel")
        return [s.run_id for s in statuses]


def resubmit_run(prefix: str, results_dir: Path, executor: str | None) -> str:
    from meshctl.orchestrate.submit import submit_planned
    from meshctl.specs.run import RunSpec
    from meshctl.specs.sweep import PlannedRun

    with _open(results_dir) as ledger:
        run_id = resolve_run(ledger, prefix)
        status = next(s for s in observe(ledger, record=True) if s.run_id == run_id)
        if status.state in ACTIVE:
            raise BadInput(f"RUN: {run_id} is {status.state}; cancel it first or wait for it to end")
        if status.state == "completed":
            raise BadInput(f"RUN: {run_id} is completed; `meshctl sweep SPEC --force` re-runs completed runs")
        if not ledger.claim([run_id], lambda state, live: not live):
            raise BadInput(f"RUN: {run_id} is being submitted by another meshctl; try again shortly")
        row = ledger.run(run_id)
        last: Submission | None = ledger.latest_submissions([run_id]).get(run_id)
        kind = executor or (last.executor if last else "local")
        planned = PlannedRun(run_id=run_id, spec=RunSpec.model_validate(row.spec), labels=status.labels,
                             resources=_resources_of(ledger, run_id), where=f"run {run_id}")
        try:
            clear(row.run_dir)
            submissions = submit_planned(kind, "resubmit", [planned], Path(results_dir).absolute(), max_parallel=1)
        except BaseException:
            ledger.release([run_id])
            raise
        ledger.record_submissions(submissions)
        return submissions[0].job_id


def _resources_of(ledger: Ledger, run_id: str) -> dict:
    """The resources the run's sweep gives it (group overrides over executor defaults)."""
    for sweep in ledger.sweeps():
        spec = ledger.sweep_spec(sweep) or {}
        for row in ledger.runs(sweep):
            if row.run_id == run_id:
                group = next((g for g in spec.get("groups", []) if g.get("name") == row.labels.get("group")), {})
                return {**(spec.get("executor") or {}).get("resources", {}), **group.get("resources", {})}
    return {}


def kill_tree(pid: int, grace_s: float = 2.0) -> None:
    """Stop a local job: its controller and every descendant (submitit's tasks ignore SIGTERM)."""
    tree = [pid, *_descendants(pid)]
    for sig in (signal.SIGINT, signal.SIGKILL):
        for p in tree:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + grace_s
        while sig == signal.SIGINT and time.time() < deadline and any(_alive(p) for p in tree):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(")")[-1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out

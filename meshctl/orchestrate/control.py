"""`meshctl cancel` and `meshctl resubmit`: act on runs found through the ledger, from any shell.

A cancellation is recorded in the run directory (`cancelled.json`, see `markers`) so it reads as cancelled whatever the
scheduler keeps: local jobs leave no record once their process is gone. A local job is a lane of runs;
cancelling one run stops its lane, and the lane's other unfinished runs read as incomplete (re-running
the sweep resumes them).
"""

from __future__ import annotations

from pathlib import Path

from meshctl.errors import BadInput
from meshctl.layout import jobs_dir, require_ledger
from meshctl.orchestrate.backends import backend
from meshctl.orchestrate.ledger import Ledger, Submission
from meshctl.orchestrate.markers import clear, write_cancelled
from meshctl.orchestrate.status import ACTIVE, observe


def _open(results_dir: Path) -> Ledger:
    return Ledger(require_ledger(results_dir, "point --results-dir (env MESHCTL_RESULTS) at your results"))


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
        by_kind: dict[str, list[Submission]] = {}
        for sub in subs.values():
            by_kind.setdefault(sub.executor, []).append(sub)
        for kind, jobs in by_kind.items():
            backend(kind).cancel(jobs)  # one scancel / one signal per local lane
        for s in statuses:
            write_cancelled(Path(s.run_dir))
        ledger.set_states({s.run_id: "cancelled" for s in statuses}, "meshctl cancel")
        return [s.run_id for s in statuses]


def resubmit_run(prefix: str, results_dir: Path, executor: str | None) -> str:
    from meshctl.orchestrate import claims
    from meshctl.orchestrate.submit import reconcile, submit_planned
    from meshctl.specs.run import RunSpec
    from meshctl.specs.sweep import PlannedRun

    with _open(results_dir) as ledger:
        run_id = resolve_run(ledger, prefix)
        reconcile(ledger, jobs_dir(Path(results_dir).absolute(), "resubmit"))  # a resubmit killed before its record
        seen = ledger.submission_marks()
        status = next(s for s in observe(ledger, record=True) if s.run_id == run_id)
        if status.state in ACTIVE:
            raise BadInput(f"RUN: {run_id} is {status.state}; cancel it first or wait for it to end")
        if status.state == "completed":
            raise BadInput(f"RUN: {run_id} is completed; `meshctl sweep SPEC --force` re-runs completed runs")
        owner = claims.me()
        with ledger.lease(owner):
            if not ledger.claim([run_id], lambda state, live: not live, owner=owner, seen=seen):
                raise BadInput(f"RUN: {run_id} is being submitted by another meshctl; try again shortly")
            row = ledger.run(run_id)
            last: Submission | None = ledger.latest_submissions([run_id]).get(run_id)
            chosen = backend(executor or (last.executor if last else "local"))
            planned = PlannedRun(run_id=run_id, spec=RunSpec.model_validate(row.spec), labels=status.labels,
                                 resources=_resources_of(ledger, run_id), where=f"run {run_id}")
            try:
                clear(row.run_dir)
                submissions = submit_planned(ledger, chosen, owner, "resubmit", [planned],
                                             Path(results_dir).absolute(), max_parallel=1)
            finally:
                ledger.release([run_id], owner)
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

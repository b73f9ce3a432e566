"""Where every run stands: the run directory (progress, results) joined with the scheduler's word.

The scheduler is asked once per refresh for all job ids, training and evaluation jobs together (one
`sacct`; one pid check per local lane), never once per run, through the executor's backend. A run
directory costs one listdir and one seek into metrics.jsonl, so status stays fast at 1,000 runs.

States: new (never submitted), submitting (claimed by a live meshctl: `claim` names it), pending, running, requeued,
completed (final.json), failed (the training raised, or the scheduler says FAILED/OOM/NODE_FAIL),
cancelled, incomplete (the job is gone without final.json: killed, timed out; re-running the sweep
resumes it from its checkpoint).

A sweep with an `eval:` plan also reports each completed run's evaluations: `2/3` documents of the
plan's tasks written so far (`1/3 running`, `0/3 pending` while its job is alive: the run's own local
lane, or the dependent SLURM job named in eval_job.json), or `failed` with the error in `detail`. The
evaluation jobs are not ledger runs; their results and failures are read from the run directory.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshctl.layout import (CANCELLED, EVAL_DIR, FAILURE, FINAL, JOB_LOG, METRICS, eval_result_name, read_json,
                            tail_metrics)
from meshctl.orchestrate.backends import backend
from meshctl.orchestrate.ledger import Ledger, RunRow, Submission
from meshctl.orchestrate.markers import EVAL_FAILURE, read_cancelled, read_eval_job, read_failure

ACTIVE = ("submitting", "pending", "running", "requeued")
TERMINAL = ("completed", "failed", "cancelled")
SCHEDULER_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUE_HOLD": "requeued", "REQUEUE_FED": "requeued",
    "REQUEUED": "requeued", "PREEMPTED": "requeued", "RESIZING": "running", "SUSPENDED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running",
    "CANCELLED": "cancelled", "FAILED": "failed", "OUT_OF_MEMORY": "failed", "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed", "DEADLINE": "incomplete", "TIMEOUT": "incomplete", "COMPLETED": "ended",
}
NO_RECORD_GRACE_S = 60  # a job just submitted may not be in the scheduler's records yet


@dataclass
class RunStatus:
    run_id: str
    state: str
    labels: dict[str, Any]
    run_dir: str
    step: int | None = None
    total_steps: int | None = None
    tokens: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    job_id: str | None = None
    executor: str | None = None
    detail: str | None = None
    log_tail: list[str] = field(default_factory=list)
    evals: str | None = None  # the sweep's evaluation plan: documents written / tasks, or "failed"
    evaluating: bool = False  # an evaluation job of this run is pending or running
    claim: str | None = None  # who holds the run's claim and since when: "pid 4242 on node7 since ..."

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def scheduler_states(submissions: list[Submission]) -> dict[str, str]:
    """The scheduler's word for every job: one query per executor kind for all of them."""
    by_kind: dict[str, list[Submission]] = {}
    for sub in submissions:
        by_kind.setdefault(sub.executor, []).append(sub)
    states: dict[str, str] = {}
    for kind, subs in by_kind.items():
        states.update(backend(kind).states(subs))
    return states


def _log_tail(sub: Submission | None, n: int = 5) -> list[str]:
    if sub is None:
        return []
    for name in (f"{sub.job_id}_0_log.err", f"{sub.job_id}_0_log.out"):
        path = Path(sub.folder) / name
        if path.exists():
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                return lines[-n:]
    return []


def derive(row: RunRow, sub: Submission | None, scheduler: str | None, live_claim: bool,
           files: frozenset[str] | None = None) -> RunStatus:
    """`files`: the names in the run directory (one listdir instead of a failed open per marker)."""
    run_dir = row.run_dir
    files = listing(run_dir) if files is None else files
    train = row.spec.get("train", {})
    status = RunStatus(run_id=row.run_id, state="new", labels=row.labels, run_dir=str(run_dir),
                       total_steps=train.get("max_steps"))
    if sub is not None:
        status.job_id, status.executor = sub.job_id, sub.executor
    metrics = tail_metrics(run_dir) if METRICS in files else {}
    if metrics:
        status.step, status.tokens = metrics.get("step"), metrics.get("tokens")
        status.train_loss, status.tokens_per_s = metrics.get("train_loss"), metrics.get("tokens_per_s")
        val = metrics.get("last_val") or {}
        first = next(iter(val.values()), None)
        status.val_loss = first.get("loss") if isinstance(first, dict) else None

    final = read_json(run_dir / FINAL) if FINAL in files else None
    if final is not None:
        status.state = "completed"
        status.val_loss = final.get("val_loss", status.val_loss)
        return status
    failure = read_failure(run_dir) if FAILURE in files else None
    cancelled_at = read_cancelled(run_dir) if CANCELLED in files else None
    state = scheduler_state(scheduler)
    holder = row.holder
    if holder is not None and live_claim:
        status.claim = holder.describe()
    if sub is None:
        status.state = "submitting" if live_claim else "new"
        if live_claim:
            status.detail = f"claimed by {status.claim or 'an older meshctl'}"
        elif holder is not None:
            status.detail = f"claim of {holder.describe()} lapsed (holder gone); `meshctl sweep` takes it over"
    elif cancelled_at is not None and cancelled_at >= sub.submitted:
        status.state = "cancelled"
    elif failure is not None and failure.get("at", 0) >= sub.submitted:
        status.state, status.detail = "failed", f"{failure['class']}: {failure['message']}"
        status.log_tail = failure.get("traceback", [])[-5:]
    elif state is None:
        status.state = "pending" if time.time() - sub.submitted < NO_RECORD_GRACE_S else "incomplete"
        status.detail = f"scheduler has no record of job {sub.job_id}" if scheduler is None else None
    elif state == "ended":  # the job finished but this run has no final.json
        status.state, status.detail = "failed", f"job {sub.job_id} ended without final.json"
        status.log_tail = _log_tail(sub)
    elif state == "running" and not (JOB_LOG in files and _taken_up(run_dir, sub)):
        status.state = "pending"  # its job runs but has not reached this run yet (a local lane's queue)
    else:
        status.state = state
        if state == "failed":
            status.detail, status.log_tail = f"scheduler state {scheduler}", _log_tail(sub)
    if status.state == "running" and status.tokens_per_s and status.step is not None and status.total_steps:
        tokens_left = (status.total_steps - status.step) * _tokens_per_step(row.spec)
        status.eta_s = tokens_left / status.tokens_per_s
    return status


def scheduler_state(scheduler: str | None) -> str | None:
    """A scheduler's word (`CANCELLED by 0`, `RUNNING`, `COMPLETED+`) as a run state; None if unknown."""
    return SCHEDULER_STATES.get((scheduler or "").split(" ")[0].upper().rstrip("+"))


def _tokens_per_step(spec: dict[str, Any]) -> int:
    return int(spec.get("train", {}).get("global_batch") or 0) * int(spec.get("data", {}).get("seq_len") or 0)


def listing(run_dir: Path) -> frozenset[str]:
    try:
        return frozenset(os.listdir(run_dir))
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


def _taken_up(run_dir: Path, sub: Submission) -> bool:
    """A job of this submission has started on the run (it appends to jobs.jsonl when it does)."""
    try:
        return (run_dir / JOB_LOG).stat().st_mtime >= sub.submitted - 1
    except FileNotFoundError:
        return False


def observe(ledger: Ledger, sweep: str | None = None, record: bool = True) -> list[RunStatus]:
    """Status of every run of a sweep (all runs if None); records state changes in the ledger.
    One scheduler query per executor kind for the training jobs and the evaluation jobs together."""
    rows = ledger.runs(sweep)
    subs = ledger.latest_submissions(r.run_id for r in rows)
    plan = _plan(ledger, sweep)
    files = {r.run_id: listing(r.run_dir) for r in rows}
    finished = {r.run_id for r in rows if FINAL in files[r.run_id]}
    progress = _evaluation_progress(rows, subs, finished, plan) if plan else {}
    asked = [s for r in rows if (s := subs.get(r.run_id)) is not None and r.run_id not in finished]
    sched = scheduler_states(asked + [job for _, _, job in progress.values() if job is not None])
    statuses = []
    for row in rows:
        sub = subs.get(row.run_id)
        scheduler = sched.get(sub.job_id) if sub is not None else None
        statuses.append(derive(row, sub, scheduler, row.live_claim, files[row.run_id]))
    _apply_evaluations(statuses, rows, progress, sched)
    if record:
        ledger.set_states({s.run_id: s.state for s in statuses})
    return statuses


def _plan(ledger: Ledger, sweep: str | None) -> dict[str, Any] | None:
    if sweep is None:
        return None
    return ledger.evaluation_plan(sweep) or (ledger.sweep_spec(sweep) or {}).get("eval")


def plan_tasks(plan: dict[str, Any]) -> list[str]:
    """The plan's task names. A ledger keeps them expanded; a plan as written in a spec (`offline`,
    `paper`) is expanded by the evaluation module, imported only then."""
    if plan.get("expanded"):
        return list(plan["tasks"])
    from meshctl.analysis.evaluation import expand_tasks

    return expand_tasks(plan.get("tasks"))


def _evaluation_progress(rows: list[RunRow], subs: dict[str, Submission], completed: set[str],
                         plan: dict[str, Any]) -> dict[str, tuple[int, int, Submission | None]]:
    """run id -> (documents written, tasks, the job evaluating it if the plan is not done) per completed run."""
    tasks, shots = plan_tasks(plan), int(plan.get("num_fewshot") or 0)
    out = {}
    for row in rows:
        if row.run_id in completed:
            done = sum((row.run_dir / EVAL_DIR / eval_result_name(task, shots)).exists() for task in tasks)
            job = evaluation_job(row.run_dir, subs.get(row.run_id)) if done < len(tasks) else None
            out[row.run_id] = (done, len(tasks), job)
    return out


def observe_evaluations(statuses: list[RunStatus], rows: list[RunRow], subs: dict[str, Submission],
                        plan: dict[str, Any]) -> None:
    """The evaluation plan's progress for every completed run, its unfinished jobs asked about at once."""
    progress = _evaluation_progress(rows, subs, {s.run_id for s in statuses if s.state == "completed"}, plan)
    states = scheduler_states([job for _, _, job in progress.values() if job is not None])
    _apply_evaluations(statuses, rows, progress, states)


def _apply_evaluations(statuses: list[RunStatus], rows: list[RunRow],
                       progress: dict[str, tuple[int, int, Submission | None]], states: dict[str, str]) -> None:
    for status, row in zip(statuses, rows):
        if status.state != "completed" or row.run_id not in progress:
            continue
        done, total, job = progress[row.run_id]
        status.evals = f"{done}/{total}"
        if job is not None:
            add_evaluation_state(status, row.run_dir, job, states.get(job.job_id))


def evaluation_job(run_dir: Path, sub: Submission | None) -> Submission | None:
    """The job that evaluates a run: its own where its executor evaluates there (a local lane), else the
    one recorded at submission (eval_job.json: a SLURM dependent job)."""
    if sub is None or backend(sub.executor).evaluates_in_job:
        return sub
    record = read_eval_job(run_dir)
    if record is None:
        return None
    return Submission(sub.run_id, sub.executor, str(record["job_id"]), None, sub.folder, float(record["at"]))


def add_evaluation_state(status: RunStatus, run_dir: Path, job: Submission, scheduler: str | None) -> None:
    """An unfinished plan: failed (the evaluation raised, or its job ended without all documents), or
    pending / running while its job is."""
    failure = read_failure(run_dir, EVAL_FAILURE)
    state = scheduler_state(scheduler)
    if state is None and time.time() - job.submitted < NO_RECORD_GRACE_S:
        state = "pending"
    if failure is not None and failure.get("at", 0) >= job.submitted:  # not one left by an earlier job
        status.evals, status.detail = "failed", f"evaluation: {failure['class']}: {failure['message']}"
        status.log_tail = failure.get("traceback", [])[-5:]
    elif state in ACTIVE:
        status.evals += " pending" if state == "pending" else " running"
        status.evaluating = True
    else:
        status.evals = "failed"
        status.detail = f"evaluation job {job.job_id} ended ({scheduler or 'no scheduler record'}) without all results"


def counts(statuses: list[RunStatus]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in statuses:
        out[s.state] = out.get(s.state, 0) + 1
    return dict(sorted(out.items()))

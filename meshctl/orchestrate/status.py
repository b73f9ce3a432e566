"""Where every run stands: the run directory (progress, results) joined with the scheduler's word.

The scheduler is asked once per refresh for all job ids (one `sacct`, one pid sweep for local jobs),
never once per run. Run directories are read from their tail only, so status stays fast at 1,000 runs.

States: new (never submitted), submitting (claimed by a live meshctl), pending, running, requeued,
completed (final.json), failed (the training raised, or the scheduler says FAILED/OOM/NODE_FAIL),
cancelled, incomplete (the job is gone without final.json: killed, timed out; re-running the sweep
resumes it from its checkpoint).

A sweep with an `eval:` plan also reports each completed run's evaluations: `2/3` documents of the
plan's tasks written so far (`1/3 running`, `0/3 pending` while its job is alive: the run's own local
lane, or the dependent SLURM job named in eval_job.json), or `failed` with the error in `detail`. The
evaluation jobs are not ledger runs; their results and failures are read from the run directory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshctl.orchestrate.markers import EVAL_FAILURE, read_cancelled, read_eval_job, read_failure
from meshctl.orchestrate.ledger import Ledger, RunRow, Submission

ACTIVE = ("submitting", "pending", "running", "requeued")
TERMINAL = ("completed", "failed", "cancelled")
SCHEDULER_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUE_HOLD": "requeued", "REQUEUE_FED": "requeued",
    "REQUEUED": "requeued", "PREEMPTED": "requeued", "RESIZING": "running", "SUSPENDED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running",
    "CANCELLED": "cancelled", "FAILED": "failed", "OUT_OF_MEMORY": "failed", "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed", "DEADLINE": "incomplete", "TIMEOUT": "incomplete", "COMPLETED": "ended",
}
TAIL_BYTES = 64 * 1024
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tail_metrics(run_dir: Path) -> dict[str, Any]:
    """Latest step's record merged with the latest validation seen in the file's tail."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return {}
    latest: dict[str, Any] = {}
    val: dict[str, Any] | None = None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a partial first line of the tail, or a write cut by a kill
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        if record["step"] >= latest.get("step", -1):
            latest = {**latest, **record} if record["step"] == latest.get("step") else dict(record)
        if isinstance(record.get("val"), dict) and record["val"]:
            val = record["val"]
    if val is not None:
        latest["last_val"] = val
    return latest


def local_job_states(submissions: list[Submission]) -> dict[str, str]:
    """Local submitit jobs: the job id is the controller's pid; a dead one left a result pickle or not."""
    states = {}
    for sub in submissions:
        try:
            os.kill(int(sub.job_id), 0)
            alive = _is_our_process(int(sub.job_id))
        except (ProcessLookupError, ValueError):
            alive = False
        except PermissionError:
            alive = True
        if alive:
            states[sub.job_id] = "RUNNING"
            continue
        result = Path(sub.folder) / f"{sub.job_id}_0_result.pkl"
        states[sub.job_id] = _result_state(result)
    return states


def _is_our_process(pid: int) -> bool:
    """Guard against pid reuse: the process must be a Python (submitit controller) process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    if not cmdline:
        return False  # a zombie
    return b"python" in cmdline and b"submitit" in cmdline


def _result_state(result: Path) -> str:
    if not result.exists():
        return "TIMEOUT"  # gone without a result: killed or lost; resumable
    import pickle

    try:
        outcome = pickle.loads(result.read_bytes())[0]
    except Exception:
        return "FAILED"
    return "COMPLETED" if outcome == "success" else "FAILED"


def scheduler_states(submissions: list[Submission]) -> dict[str, str]:
    by_kind: dict[str, list[Submission]] = {}
    for sub in submissions:
        by_kind.setdefault(sub.executor, []).append(sub)
    states: dict[str, str] = {}
    if by_kind.get("local"):
        states.update(local_job_states(by_kind["local"]))
    if by_kind.get("slurm"):
        from meshctl.orchestrate.executors import query_states

        states.update(query_states([s.job_id for s in by_kind["slurm"]]))  # one sacct for all
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


def derive(row: RunRow, sub: Submission | None, scheduler: str | None, live_claim: bool) -> RunStatus:
    run_dir = row.run_dir
    train = row.spec.get("train", {})
    status = RunStatus(run_id=row.run_id, state="new", labels=row.labels, run_dir=str(run_dir),
                       total_steps=train.get("max_steps"))
    if sub is not None:
        status.job_id, status.executor = sub.job_id, sub.executor
    metrics = tail_metrics(run_dir)
    if metrics:
        status.step, status.tokens = metrics.get("step"), metrics.get("tokens")
        status.train_loss, status.tokens_per_s = metrics.get("train_loss"), metrics.get("tokens_per_s")
        val = metrics.get("last_val") or {}
        first = next(iter(val.values()), None)
        status.val_loss = first.get("loss") if isinstance(first, dict) else None

    final = _read_json(run_dir / "final.json")
    if final is not None:
        status.state = "completed"
        status.val_loss = final.get("val_loss", status.val_loss)
        return status
    failure = read_failure(run_dir)
    cancelled_at = read_cancelled(run_dir)
    state = scheduler_state(scheduler)
    if sub is None:
        status.state = "submitting" if live_claim else "new"
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
    elif state == "running" and sub.executor == "local" and not metrics:
        status.state = "pending"  # queued behind other runs in its local lane
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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def observe(ledger: Ledger, sweep: str | None = None, record: bool = True) -> list[RunStatus]:
    """Status of every run of a sweep (all runs if None); records state changes in the ledger."""
    rows = ledger.runs(sweep)
    subs = ledger.latest_submissions(r.run_id for r in rows)
    sched = scheduler_states([s for r in rows if (s := subs.get(r.run_id)) is not None
                              and not (r.run_dir / "final.json").exists()])
    statuses = []
    for row in rows:
        sub = subs.get(row.run_id)
        scheduler = sched.get(sub.job_id) if sub is not None else None
        statuses.append(derive(row, sub, scheduler, row.live_claim))
    plan = (ledger.sweep_spec(sweep) or {}).get("eval") if sweep is not None else None
    if plan:
        observe_evaluations(statuses, rows, subs, plan)
    if record:
        ledger.set_states({s.run_id: s.state for s in statuses})
    return statuses


def observe_evaluations(statuses: list[RunStatus], rows: list[RunRow], subs: dict[str, Submission],
                        plan: dict[str, Any]) -> None:
    """The evaluation plan's progress for every completed run, its unfinished jobs asked about at once."""
    from meshctl.analysis.evaluation import expand_tasks, result_path

    tasks = expand_tasks(plan.get("tasks"))
    shots = int(plan.get("num_fewshot") or 0)
    unfinished: dict[str, tuple[RunStatus, Path, Submission]] = {}
    for status, row in zip(statuses, rows):
        if status.state != "completed":
            continue
        done = sum(result_path(row.run_dir, task, shots, None).exists() for task in tasks)
        status.evals = f"{done}/{len(tasks)}"
        if done < len(tasks) and (job := evaluation_job(row.run_dir, subs.get(row.run_id))) is not None:
            unfinished[row.run_id] = (status, row.run_dir, job)
    states = scheduler_states([job for _, _, job in unfinished.values()])
    for status, run_dir, job in unfinished.values():
        add_evaluation_state(status, run_dir, job, states.get(job.job_id))


def evaluation_job(run_dir: Path, sub: Submission | None) -> Submission | None:
    """The job that evaluates a run: a local lane evaluates in the run's own job, SLURM in the dependent
    job recorded at submission."""
    if sub is None or sub.executor == "local":
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

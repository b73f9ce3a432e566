"""`status` of a sweep's evaluation plan: evaluation jobs are not ledger runs, so their progress and
failures are read from the run directory (eval/*.json; eval_failure.json written by EvalJob; the SLURM
evaluation job in eval_job.json) and their liveness from the scheduler."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from meshctl.orchestrate.jobs import EvalJob
from meshctl.orchestrate.ledger import RunRow, Submission
from meshctl.orchestrate.markers import EVAL_FAILURE, EVAL_JOB, clear, write_eval_job, write_failure
from meshctl.orchestrate.status import RunStatus, add_evaluation_state, evaluation_job, observe_evaluations

PLAN = {"tasks": ["offline"], "num_fewshot": 0, "limit": 8}  # offline = meshctl_cloze, _cloze_mc, _bpb
TASKS = ("meshctl_cloze", "meshctl_cloze_mc", "meshctl_bpb")


def lane(run_dir: Path, submitted: float | None = None) -> Submission:
    """A local lane's submission whose job id is no live process (so: ended, no result file)."""
    return Submission(run_dir.name, "local", "999999999", None, str(run_dir), submitted or time.time() - 600)


def observed(run_dir: Path, plan: dict = PLAN, sub: Submission | None = None) -> RunStatus:
    status = RunStatus(run_id=run_dir.name, state="completed", labels={}, run_dir=str(run_dir))
    row = RunRow(run_dir.name, {}, run_dir, "completed", {}, 0)
    observe_evaluations([status], [row], {row.run_id: sub or lane(run_dir)}, plan)
    return status


def write_documents(run_dir: Path, *tasks: str) -> None:
    (run_dir / "eval").mkdir(exist_ok=True)
    for task in tasks:
        (run_dir / "eval" / f"{task}.json").write_text("{}")


def test_progress_counts_the_plans_documents(tmp_path: Path) -> None:
    write_documents(tmp_path, "meshctl_cloze", "meshctl_bpb.loops3")  # another depth: not the plan's
    status = observed(tmp_path)
    assert status.evals == "failed" and "ended" in status.detail and not status.evaluating  # its job is gone
    write_documents(tmp_path, *TASKS)
    assert observed(tmp_path).evals == "3/3" and observed(tmp_path, {**PLAN, "num_fewshot": 5}).evals == "failed"


def test_an_evaluation_is_pending_or_running_while_its_job_is(tmp_path: Path) -> None:
    write_documents(tmp_path, "meshctl_cloze")
    job = lane(tmp_path)
    for scheduler, shown in (("RUNNING", "1/3 running"), ("PENDING", "1/3 pending"), ("REQUEUED", "1/3 running")):
        status = RunStatus(run_id="r", state="completed", labels={}, run_dir=str(tmp_path), evals="1/3")
        add_evaluation_state(status, tmp_path, job, scheduler)
        assert (status.evals, status.evaluating) == (shown, True)
    fresh = RunStatus(run_id="r", state="completed", labels={}, run_dir=str(tmp_path), evals="1/3")
    add_evaluation_state(fresh, tmp_path, lane(tmp_path, submitted=time.time()), None)  # sacct has no record yet
    assert (fresh.evals, fresh.evaluating) == ("1/3 pending", True)


def test_a_failed_evaluation_shows_with_its_error_until_the_plan_is_done(tmp_path: Path) -> None:
    write_failure(tmp_path, ValueError("no such task"), EVAL_FAILURE)
    status = observed(tmp_path)
    assert status.evals == "failed" and status.detail == "evaluation: ValueError: no such task"
    assert status.log_tail and status.state == "completed"  # the training itself stands
    running = RunStatus(run_id="r", state="completed", labels={}, run_dir=str(tmp_path), evals="0/3")
    add_evaluation_state(running, tmp_path, lane(tmp_path, submitted=time.time() + 1), "RUNNING")
    assert running.evals == "0/3 running"  # the marker is older than this evaluation's job
    write_documents(tmp_path, *TASKS)
    assert observed(tmp_path).evals == "3/3"
    write_eval_job(tmp_path, "123_4")
    clear(tmp_path)  # a resubmitted run starts clean
    assert not (tmp_path / EVAL_FAILURE).exists() and not (tmp_path / EVAL_JOB).exists()


def test_slurm_runs_are_evaluated_by_the_job_recorded_at_submission(tmp_path: Path) -> None:
    training = Submission("r", "slurm", "123_4", 4, str(tmp_path), time.time() - 600)
    assert evaluation_job(tmp_path, training) is None  # no evaluation was submitted for it
    write_eval_job(tmp_path, "124_4")
    job = evaluation_job(tmp_path, training)
    assert job is not None and (job.job_id, job.executor) == ("124_4", "slurm") and job.submitted > training.submitted
    assert evaluation_job(tmp_path, lane(tmp_path)).job_id == "999999999"  # a local lane: the run's own job


def test_an_evaluation_job_that_raises_leaves_its_marker(tmp_path: Path) -> None:
    run_dir = tmp_path / "not-a-trained-run"
    run_dir.mkdir()
    with pytest.raises(Exception):
        EvalJob(str(run_dir), PLAN)()
    record = json.loads((run_dir / EVAL_FAILURE).read_text())
    assert record["class"] == "BadInput" and "spec.json" in record["message"] and record["at"] > 0
    assert observed(run_dir).evals == "failed"

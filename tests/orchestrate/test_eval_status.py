"""`status` of a sweep's evaluation plan: evaluation jobs are not ledger runs, so their progress and
failures are read from the run directory (eval/*.json, eval_failure.json written by EvalJob)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshctl.orchestrate.jobs import EvalJob
from meshctl.orchestrate.markers import EVAL_FAILURE, clear, write_failure
from meshctl.orchestrate.status import RunStatus, add_evaluations

PLAN = {"tasks": ["offline"], "num_fewshot": 0, "limit": 8}  # offline = meshctl_cloze, _cloze_mc, _bpb


def observed(run_dir: Path, plan: dict = PLAN) -> RunStatus:
    status = RunStatus(run_id=run_dir.name, state="completed", labels={}, run_dir=str(run_dir))
    add_evaluations(status, run_dir, plan)
    return status


def test_progress_counts_the_plans_documents(tmp_path: Path) -> None:
    assert observed(tmp_path).evals == "0/3"
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "meshctl_cloze.json").write_text("{}")
    (tmp_path / "eval" / "meshctl_bpb.loops3.json").write_text("{}")  # another depth: not the plan's
    assert observed(tmp_path).evals == "1/3"
    assert observed(tmp_path, {**PLAN, "num_fewshot": 5}).evals == "0/3"  # the plan's shots only


def test_a_failed_evaluation_shows_with_its_error_until_the_plan_is_done(tmp_path: Path) -> None:
    write_failure(tmp_path, ValueError("no such task"), EVAL_FAILURE)
    status = observed(tmp_path)
    assert status.evals == "failed" and status.detail == "evaluation: ValueError: no such task"
    assert status.log_tail and status.state == "completed"  # the training itself stands
    (tmp_path / "eval").mkdir()
    for task in ("meshctl_cloze", "meshctl_cloze_mc", "meshctl_bpb"):
        (tmp_path / "eval" / f"{task}.json").write_text("{}")
    assert observed(tmp_path).evals == "3/3"
    clear(tmp_path)  # a resubmitted run starts clean
    assert not (tmp_path / EVAL_FAILURE).exists()


def test_an_evaluation_job_that_raises_leaves_its_marker(tmp_path: Path) -> None:
    run_dir = tmp_path / "not-a-trained-run"
    run_dir.mkdir()
    with pytest.raises(Exception):
        EvalJob(str(run_dir), PLAN)()
    record = json.loads((run_dir / EVAL_FAILURE).read_text())
    assert record["class"] and record["message"] and record["at"] > 0
    assert observed(run_dir).evals == "failed"

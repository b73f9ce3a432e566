"""Jobs through `make_executor("slurm", ...)` on a real SLURM (scripts/slurm/start_local_slurm.sh).

Run with MESHCTL_SLURM=1; skipped otherwise (tests/orchestrate/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from meshctl.orchestrate.executors import (
    Resources,
    cancel,
    make_executor,
    max_array_size,
    query_jobs,
    query_states,
)

pytestmark = pytest.mark.slurm

# Jobs unpickle what they run; this module is not importable from the job's working directory,
# so its functions and classes travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ACTIVE = {"UNKNOWN", "PENDING", "RUNNING", "REQUEUED", "COMPLETING"}


def add(a: int, b: int) -> int:
    return a + b


def square_and_rank(x: int) -> tuple[int, str]:
    return x * x, os.environ["SLURM_ARRAY_TASK_ID"]


def sleep_for(seconds: float) -> None:
    time.sleep(seconds)


class CountSteps(submitit.helpers.Checkpointable):
    """Appends one line per one-second step to `progress`; a new attempt resumes after the last line."""

    def __call__(self, progress: str, steps: int) -> dict[str, int]:
        path = Path(progress)
        done = len(path.read_text().splitlines()) if path.exists() else 0
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        for step in range(done, steps):
            time.sleep(1.0)
            with path.open("a") as f:
                f.write(f"{step} {attempt}\n")
        return {"steps": steps, "attempt": attempt}


def wait_states(job_ids: list[str], want: set[str], timeout_s: float) -> dict[str, str]:
    """Poll query_states until every job is in `want`."""
    end = time.time() + timeout_s
    while True:
        states = query_states(job_ids)
        if all(state in want for state in states.values()) or time.time() > end:
            return states
        time.sleep(0.5)


def test_submit_a_function_and_get_its_result(tmp_path: Path) -> None:
    executor = make_executor("slurm", tmp_path, Resources(timeout_min=2), name="meshctl-test")
    job = executor.submit(add, 2, 3)
    assert job.result() == 5
    assert wait_states([job.job_id], {"COMPLETED"}, 30) == {job.job_id: "COMPLETED"}
    script = job.paths.submission_file.read_text()
    assert "#SBATCH --time=2" in script and "#SBATCH --signal=USR2@30" in script


def test_array_of_three_is_seen_in_one_sacct_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executor = make_executor("slurm", tmp_path, Resources(timeout_min=2, array_parallelism=2))
    jobs = executor.map_array(square_and_rank, [1, 2, 3])
    ids = [job.job_id for job in jobs]
    base = ids[0].split("_")[0]
    assert ids == [f"{base}_0", f"{base}_1", f"{base}_2"]
    assert "--array=0-2%2" in jobs[0].paths.submission_file.read_text()
    assert [job.result() for job in jobs] == [(1, "0"), (4, "1"), (9, "2")]

    assert wait_states(ids, {"COMPLETED"}, 30) == {job_id: "COMPLETED" for job_id in ids}

    calls: list[list[str]] = []
    real_run = subprocess.run

    def spy(command, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(list(command))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    assert query_states([*ids, "999999"]) == {**{job_id: "COMPLETED" for job_id in ids}, "999999": "UNKNOWN"}
    assert [c[0] for c in calls] == ["sacct"]
    assert calls[0][calls[0].index("--jobs") + 1] == f"{base},999999"  # the whole array, asked once


def test_cancel_a_sleeping_job(tmp_path: Path) -> None:
    executor = make_executor("slurm", tmp_path, Resources(timeout_min=5))
    job = executor.submit(sleep_for, 300)
    assert wait_states([job.job_id], {"RUNNING"}, 60)[job.job_id] == "RUNNING"
    cancel([job.job_id])
    assert wait_states([job.job_id], {"CANCELLED"}, 60) == {job.job_id: "CANCELLED"}
    cancel([job.job_id])  # cancelling a finished job again is harmless


def test_max_array_size_is_the_clusters() -> None:
    assert max_array_size() == int(os.environ.get("MESHCTL_SLURM_ARRAY_SIZE", "1001"))


@pytest.mark.slow
def test_checkpointable_job_is_requeued_at_its_time_limit_and_finishes(tmp_path: Path) -> None:
    """A 1-minute limit with the signal 5 s before it: SLURM signals 25-55 s into the attempt (its
    time-limit check runs periodically and may send --signal up to 30 s early), submitit requeues, and
    the next attempt finishes the 80 steps, which no single attempt can hold. About 100 s; the local
    cluster lets a requeued job start again after 10 s, not 120."""
    progress = tmp_path / "progress.txt"
    executor = make_executor("slurm", tmp_path / "jobs", Resources(timeout_min=1, signal_delay_s=5))
    job = executor.submit(CountSteps(), str(progress), 80)
    end = time.time() + 300
    while not job.done() and time.time() < end:
        time.sleep(2)
    result = job.result()
    lines = [line.split() for line in progress.read_text().splitlines()]
    assert [int(step) for step, _ in lines] == list(range(80))  # no step lost or done twice
    assert result["attempt"] >= 1 and {attempt for _, attempt in lines} >= {"0", str(result["attempt"])}
    record = query_jobs([job.job_id])[job.job_id]
    assert record.state == "COMPLETED" and record.attempts == result["attempt"] + 1

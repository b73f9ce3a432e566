"""Executors without SLURM: Resources, array splitting, sacct parsing, the local executor.

Fake `sacct`/`scancel`/`scontrol` scripts on PATH stand in for the cluster where one is needed;
tests against a real one are in test_slurm_executor.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import pytest
from pydantic import ValidationError

from meshctl.errors import BadInput, MeshctlError
from meshctl.orchestrate.executors import (
    Resources,
    cancel,
    make_executor,
    max_array_size,
    parse_sacct,
    query_jobs,
    query_states,
    split_arrays,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # local jobs cannot import this module

# Captured from the local cluster (scripts/slurm/start_local_slurm.sh) with
# `sacct --duplicates --parsable2 -o JobID,State,Submit,Start,End,ExitCode`: job 19 hit its time limit,
# was requeued by submitit and completed; 15 is an array of 3; 12 an array whose tasks 1-2 still
# wait behind %1; 9 an array cancelled while tasks 1-2 waited; 8 was requeued, then cancelled.
SACCT_TEXT = """\
JobID|State|Submit|Start|End|ExitCode
8|REQUEUED|2026-11-25T18:44:27|2026-11-25T18:44:28|2026-11-25T18:44:54|0:0
8.batch|COMPLETED|2026-11-25T18:44:28|2026-11-25T18:44:28|2026-11-25T18:44:54|0:0
8|CANCELLED by 0|2026-11-25T18:44:54|2026-11-25T18:45:09|2026-11-25T18:45:27|0:0
8.batch|CANCELLED|2026-11-25T18:45:09|2026-11-25T18:45:09|2026-11-25T18:45:27|0:15
9_0|CANCELLED by 0|2026-11-25T18:45:56|2026-11-25T18:45:57|2026-11-25T18:45:59|0:0
9_0.batch|CANCELLED|2026-11-25T18:45:57|2026-11-25T18:45:57|2026-11-25T18:45:59|0:15
9_[1-2%1]|CANCELLED by 0|2026-11-25T18:45:56|2026-11-25T18:45:59|2026-11-25T18:45:59|0:0
12_0|RUNNING|2026-11-25T18:47:30|2026-11-25T18:47:30|Unknown|0:0
12_[1-2%1]|PENDING|2026-11-25T18:47:30|Unknown|Unknown|0:0
15_0|COMPLETED|2026-11-25T18:48:12|2026-11-25T18:48:12|2026-11-25T18:48:13|0:0
15_0.batch|COMPLETED|2026-11-25T18:48:12|2026-11-25T18:48:12|2026-11-25T18:48:13|0:0
15_0.0|COMPLETED|2026-11-25T18:48:13|2026-11-25T18:48:13|2026-11-25T18:48:13|0:0
15_1|COMPLETED|2026-11-25T18:48:12|2026-11-25T18:48:12|2026-11-25T18:48:13|0:0
15_1.batch|COMPLETED|2026-11-25T18:48:12|2026-11-25T18:48:12|2026-11-25T18:48:13|0:0
15_1.0|COMPLETED|2026-11-25T18:48:13|2026-11-25T18:48:13|2026-11-25T18:48:13|0:0
15_2|COMPLETED|2026-11-25T18:48:12|2026-11-25T18:48:13|2026-11-25T18:48:14|0:0
15_2.batch|COMPLETED|2026-11-25T18:48:13|2026-11-25T18:48:13|2026-11-25T18:48:14|0:0
15_2.0|COMPLETED|2026-11-25T18:48:13|2026-11-25T18:48:13|2026-11-25T18:48:14|0:0
19|REQUEUED|2026-11-25T18:48:21|2026-11-25T18:48:28|2026-11-25T18:48:54|0:0
19.batch|CANCELLED|2026-11-25T18:48:28|2026-11-25T18:48:28|2026-11-25T18:48:54|0:15
19.0|CANCELLED|2026-11-25T18:48:29|2026-11-25T18:48:29|2026-11-25T18:48:54|0:15
19|COMPLETED|2026-11-25T18:48:54|2026-11-25T18:49:09|2026-11-25T18:49:25|0:0
19.batch|COMPLETED|2026-11-25T18:49:09|2026-11-25T18:49:09|2026-11-25T18:49:25|0:0
19.0|COMPLETED|2026-11-25T18:49:09|2026-11-25T18:49:09|2026-11-25T18:49:25|0:0
20|FAILED|2026-11-25T18:49:31|2026-11-25T18:49:32|2026-11-25T18:49:32|1:0
20.batch|FAILED|2026-11-25T18:49:32|2026-11-25T18:49:32|2026-11-25T18:49:32|1:0
"""


def add(a: int, b: int) -> int:
    return a + b


def fake_tool(bin_dir: Path, name: str, script: str) -> Path:
    """An executable `name` in `bin_dir` that appends its arguments to `name`.calls, then runs `script`."""
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f'#!/bin/sh\necho "$@" >> "{bin_dir}/{name}.calls"\n{script}\n')
    tool.chmod(0o755)
    return bin_dir / f"{name}.calls"


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bin directory that shadows the real SLURM tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


@pytest.fixture
def no_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH without any SLURM tool."""
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


# Resources


def test_resources_defaults_follow_the_gpus_and_the_time_limit() -> None:
    r = Resources(timeout_min=60, gpus_per_node=8)
    assert r.tasks_per_node == 8 and r.nodes == 1 and r.cpus_per_task == 1
    assert r.signal_delay_s == 120 and r.max_num_timeout == 3 and r.array_parallelism == 256
    assert Resources(timeout_min=60).tasks_per_node == 1
    assert Resources(timeout_min=2).signal_delay_s == 30  # a quarter of a short limit
    assert Resources.model_validate_json(r.model_dump_json()) == r


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "timeout_min"),
        ({"timeout_min": 0}, "greater than 0"),
        ({"timeout_min": 10, "gpus": 8}, "Extra inputs are not permitted"),
        ({"timeout_min": 10, "gpus_per_node": 8, "tasks_per_node": 1}, "must equal gpus_per_node"),
        ({"timeout_min": 1, "signal_delay_s": 60}, "shorter than the time limit"),
        ({"timeout_min": 10, "partition": ""}, "at least 1 character"),
        ({"timeout_min": 10, "mem_gb": -1}, "greater than 0"),
        ({"timeout_min": 10, "extra": {"time": "10"}}, "--time is set by meshctl"),
        ({"timeout_min": 10, "extra": {"signal": "USR1@60"}}, "--signal is set by meshctl"),
        ({"timeout_min": 10, "extra": {"--x y": 1}}, "not an sbatch option name"),
    ],
)
def test_resources_refuses_bad_values(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Resources.model_validate(fields)


def test_every_resources_field_is_described() -> None:
    assert all(field.description for field in Resources.model_fields.values())


def test_slurm_parameters_map_onto_sbatch_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    r = Resources(timeout_min=90, gpus_per_node=4, cpus_per_task=8, nodes=2, mem_gb=200, partition="gpu",
                  account="lm", qos="high", constraint="h100", array_parallelism=16, signal_delay_s=180,
                  max_num_timeout=20, extra={"exclude": "node7", "exclusive": True})
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # as if srun were installed
    executor = make_executor("slurm", tmp_path, r, name="meshctl-test")
    assert executor._executor.max_num_timeout == 20
    script = _make_sbatch_string(command="python -m x", folder=tmp_path, map_count=40, **executor.parameters)
    for flag in ("--time=90", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=8", "--nodes=2",
                 "--mem=200GB", "--partition=gpu", "--account=lm", "--qos=high", "--constraint=h100",
                 "--array=0-39%16", "--signal=USR2@180", "--exclude=node7", "--job-name=meshctl-test"):
        assert f"#SBATCH {flag}\n" in script, flag
    assert "#SBATCH --exclusive\n" in script
    assert "gpus" not in Resources(timeout_min=5).slurm_parameters()  # no --gpus-per-node=0 on CPU clusters


def test_slurm_executor_without_slurm_says_so(no_slurm: None, tmp_path: Path) -> None:
    with pytest.raises(MeshctlError, match="no SLURM on this machine"):
        make_executor("slurm", tmp_path, Resources(timeout_min=5))


def test_local_executor_takes_one_node(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="resources.nodes"):
        make_executor("local", tmp_path, Resources(timeout_min=5, nodes=2))


# Arrays


def test_split_arrays_keeps_order_and_size() -> None:
    chunks = split_arrays(list(range(2500)), 1001)
    assert [len(c) for c in chunks] == [1001, 1001, 498]
    assert [x for c in chunks for x in c] == list(range(2500))
    assert split_arrays([], 10) == [] and split_arrays("abc", 5) == [["a", "b", "c"]]
    with pytest.raises(ValueError, match="at least 1"):
        split_arrays([1], 0)


def test_max_array_size_reads_scontrol(fake_bin: Path) -> None:
    fake_tool(fake_bin, "scontrol", "printf 'MaxArraySize            = 1001\\nMaxJobCount             = 10000\\n'")
    assert max_array_size() == 1001
    fake_tool(fake_bin, "scontrol", "echo 'MaxArraySize = 0'")
    assert max_array_size() == 1  # arrays disabled: one job per run
    fake_tool(fake_bin, "scontrol", "echo 'slurm_load_ctl_conf error: Unable to contact slurm controller' >&2; exit 1")
    assert max_array_size() == 1000


def test_max_array_size_without_scontrol(no_slurm: None) -> None:
    assert max_array_size() == 1000


# sacct


def test_parse_sacct_takes_the_latest_attempt_and_expands_arrays() -> None:
    records = parse_sacct(SACCT_TEXT)
    assert not any("." in job_id for job_id in records)
    assert {job_id: r.state for job_id, r in records.items()} == {
        "8": "CANCELLED", "9_0": "CANCELLED", "9_1": "CANCELLED", "9_2": "CANCELLED",
        "12_0": "RUNNING", "12_1": "PENDING", "12_2": "PENDING",
        "15_0": "COMPLETED", "15_1": "COMPLETED", "15_2": "COMPLETED", "19": "COMPLETED", "20": "FAILED",
    }
    assert records["19"].attempts == 2 and records["19"].start == "2026-11-25T18:49:09"
    assert records["8"].attempts == 2 and records["15_1"].attempts == 1
    assert records["20"].exit_code == "1:0"
    assert parse_sacct("") == {}


def test_parse_sacct_expands_ranges_and_lists() -> None:
    text = "JobID|State|Submit|Start|End|ExitCode\n7_[0-2,5,10-11%4]|PENDING|2026-01-01T00:00:00|Unknown|Unknown|0:0\n"
    assert sorted(parse_sacct(text)) == ["7_0", "7_1", "7_10", "7_11", "7_2", "7_5"]


def test_parse_sacct_refuses_unexpected_columns() -> None:
    with pytest.raises(MeshctlError, match="lacks the column"):
        parse_sacct("JobID|State\n1|COMPLETED\n")


def test_query_states_calls_sacct_once_for_all_jobs(fake_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "sacct.out").write_text(SACCT_TEXT)
    calls = fake_tool(fake_bin, "sacct", f"cat {tmp_path}/sacct.out")
    ids = ["19", "15_0", "15_1", "15_2", "12_2", "8", "404"]
    assert query_states(ids) == {"19": "COMPLETED", "15_0": "COMPLETED", "15_1": "COMPLETED",
                                 "15_2": "COMPLETED", "12_2": "PENDING", "8": "CANCELLED", "404": "UNKNOWN"}
    (line,) = calls.read_text().splitlines()
    assert "--duplicates" in line and "--allocations" in line and line.endswith("--jobs 19,15,12,8,404")
    assert set(query_jobs(["15_1", "404"])) == {"15_1"}
    assert query_states([]) == {} and len(calls.read_text().splitlines()) == 2  # no call for no jobs


def test_query_states_reports_sacct_failure(fake_bin: Path) -> None:
    fake_tool(fake_bin, "sacct", "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1")
    with pytest.raises(MeshctlError, match="sacct failed: sacct: error: Slurm accounting storage is disabled"):
        query_states(["1"])


def test_query_states_without_sacct(no_slurm: None) -> None:
    with pytest.raises(MeshctlError, match="sacct not found"):
        query_states(["1"])


def test_cancel_calls_scancel_once(fake_bin: Path) -> None:
    calls = fake_tool(fake_bin, "scancel", "true")
    cancel([])
    assert not calls.exists()
    cancel(["12_1", "19", "20"])
    assert calls.read_text() == "12_1 19 20\n"


# Local executor


def test_local_executor_runs_a_function(tmp_path: Path) -> None:
    executor = make_executor("local", tmp_path, Resources(timeout_min=1, signal_delay_s=10))
    assert {k: v for k, v in executor.parameters.items() if k != "setup"} == {
        "timeout_min": 1, "tasks_per_node": 1, "gpus_per_node": 0, "signal_delay_s": 10}
    job = executor.submit(add, 2, 3)
    assert job.result() == 5
    assert job.paths.stdout.exists() and (tmp_path / "local-controllers.log").exists()


def test_local_job_outlives_the_process_that_submitted_it(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    submitter = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from meshctl.orchestrate.executors import Resources, make_executor

        def work():
            time.sleep(2)
            Path({str(flag)!r}).write_text("done")
            return 7

        job = make_executor("local", {str(tmp_path / "jobs")!r}, Resources(timeout_min=1)).submit(work)
        print(job.job_id, job.paths.result_pickle)
    """)
    out = subprocess.run([sys.executable, "-c", submitter], capture_output=True, text=True, timeout=60, check=True)
    pid, result_pickle = out.stdout.split()
    assert not flag.exists()  # the submitter returned before the job finished
    end = time.time() + 60
    while not Path(result_pickle).exists() and time.time() < end:
        time.sleep(0.2)
    assert flag.read_text() == "done" and Path(result_pickle).exists()

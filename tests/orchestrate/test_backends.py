"""The executor backends without a cluster: the registry, finding jobs by their submission record
(fake `squeue` on PATH; a real tagged process tree for local lanes), and `release`'s failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshctl.errors import BadInput, MeshctlError
from meshctl.executor_kinds import EXECUTOR_KINDS
from meshctl.orchestrate.backends import backend
from meshctl.orchestrate.backends.local import TAG, tagged_processes
from meshctl.orchestrate.ledger import Submission
from meshctl.orchestrate.records import SubmissionRecord, pending, settle, settled, write_pending
from tests.orchestrate.test_executors import fake_bin, fake_tool  # noqa: F401  (fixture)


def test_one_backend_per_executor_kind() -> None:
    for kind in EXECUTOR_KINDS:
        assert backend(kind).kind == kind
    with pytest.raises(BadInput, match="executor: unknown kind 'pbs'; use local or slurm"):
        backend("pbs")


def record(tmp_path: Path, runs: list[str], kind: str = "slurm") -> SubmissionRecord:
    folder = tmp_path / "results" / "jobs" / "s"
    return SubmissionRecord.new(kind, folder, "s", runs, "{}", resources={"timeout_min": 5})


def test_records_are_pending_until_settled(tmp_path: Path) -> None:
    r = record(tmp_path, ["a", "b"])
    write_pending(r)
    assert [p.token for p in pending(r.folder)] == [r.token] and r.name == f"meshctl-s-{r.token}"
    settle(r, ["7_0", "7_1"])
    assert pending(r.folder) == [] and [s.job_ids for s in settled(r.folder)] == [["7_0", "7_1"]]
    empty = record(tmp_path, ["c"])
    write_pending(empty)
    settle(empty, [])  # nothing reached the scheduler: no record kept
    assert pending(r.folder) == [] and len(settled(r.folder)) == 1


def test_slurm_adopts_the_tasks_squeue_knows_by_name_and_restores_their_pickles(fake_bin: Path, tmp_path: Path) -> None:
    found, lost = record(tmp_path, ["a", "b"]), record(tmp_path, ["c"])
    calls = fake_tool(fake_bin, "squeue", f"printf '41_0|{found.name}\\n41_1|{found.name}\\n'")
    Path(found.folder).mkdir(parents=True)
    (Path(found.folder) / "41_1_submitted.pkl").write_bytes(b"moved by submitit before the kill")
    spec = '{"model": "tiny-64"}'
    adopted = backend("slurm").adopt([found, lost], lambda run_id: spec)
    assert list(adopted) == [found.token]
    assert [(s.run_id, s.job_id, s.array_index) for s in adopted[found.token]] == [("a", "41_0", 0), ("b", "41_1", 1)]
    (line,) = calls.read_text().splitlines()  # one query for both records
    assert f"--name={found.name},{lost.name}" in line and "--array" in line
    import pickle

    restored = pickle.loads((Path(found.folder) / "41_0_submitted.pkl").read_bytes())
    assert restored.function.spec_json == spec and restored.function.run_dir.endswith("runs/a")
    assert (Path(found.folder) / "41_1_submitted.pkl").read_bytes() == b"moved by submitit before the kill"


def test_slurm_release_tolerates_forgotten_jobs_and_reports_the_rest(fake_bin: Path) -> None:
    subs = [Submission("a", "slurm", "41_0", 0, "/f", 0.0), Submission("b", "slurm", "41_1", 1, "/f", 0.0)]
    calls = fake_tool(fake_bin, "scontrol", "echo 'Invalid job id specified for job 41' >&2; exit 1")
    backend("slurm").release(subs)
    assert calls.read_text() == "release 41\n"  # one call for the array
    fake_tool(fake_bin, "scontrol", "echo 'Unable to contact slurm controller' >&2; exit 1")
    with pytest.raises(MeshctlError, match="scontrol release 41 failed: Unable to contact .* run `meshctl sweep` again"):
        backend("slurm").release(subs)


def test_a_local_lane_is_found_by_the_tag_in_its_environment() -> None:
    token = f"t{os.getpid()}"
    lane = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"],
                            env={**os.environ, TAG: token})
    try:
        deadline = time.time() + 30
        while time.time() < deadline and tagged_processes({token}) != {token: lane.pid}:
            time.sleep(0.1)
        assert tagged_processes({token, "other"}) == {token: lane.pid}  # the topmost of the tagged tree
    finally:
        for child in subprocess.run(["pgrep", "-P", str(lane.pid)], capture_output=True, text=True).stdout.split():
            os.kill(int(child), 9)
        lane.kill()
        lane.wait()
    assert tagged_processes({token}) == {}

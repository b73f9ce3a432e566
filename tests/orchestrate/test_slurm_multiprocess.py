"""A 2-process FSDP run through the local SLURM cluster: `meshctl sweep --executor slurm` asks for one node
and 2 tasks, submitit starts the training function in each (the first task holds the run directory's lock
for the job, orchestrate/jobs.py), Lightning's SLURMEnvironment makes them ranks 0 and 1 (gloo), and the
run finishes with the losses of the same run trained in one process."""

from __future__ import annotations

import json
import pickle
import subprocess
import time
from pathlib import Path

import pytest

from meshctl.train.job import run_training
from meshctl.train.rundir import read_metrics
from tests.orchestrate.helpers import meshctl, tiny_sweep, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def node_cpus() -> int:
    out = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, timeout=30, check=True)
    return int(out.stdout.split("CPUTot=")[1].split()[0])


def wait_for_run(run_dir: Path, jobs: Path, timeout: float) -> None:
    """Until final.json is written; fails at once when a task of the job returned without training."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "final.json").exists():
        for result in jobs.rglob("*_result.pkl"):
            _, value = pickle.loads(result.read_bytes())
            assert not (isinstance(value, dict) and "skipped" in value), f"{result.name}: {value['skipped']}"
        assert time.monotonic() < deadline, f"{run_dir} did not finish in {timeout} s"
        time.sleep(1)


def test_two_task_fsdp_job_through_slurm_matches_one_process(tmp_path, prepared_demo) -> None:
    assert node_cpus() >= 2, "the local cluster needs 2 CPUs for a 2-task job"
    spec = tiny_sweep(prepared_demo, name="slurm_fsdp")
    spec["train"] = {**spec["train"], "global_batch": 8, "micro_batch": 2, "tokens": 8 * 32 * 6,
                     "strategy": "fsdp", "devices": 2, "log_every": 1, "val_every": 3, "ckpt_every": 3}
    spec["groups"][0].update(include_vanilla=False, variants=[{"structure": "1+1R2+1", "recurrence": "mesh"}])
    spec["executor"] = {"kind": "slurm", "resources": {"timeout_min": 10, "cpus_per_task": 1, "tasks_per_node": 2}}
    path = write_spec(tmp_path / "s.yaml", spec)
    results = tmp_path / "results"
    out = meshctl("sweep", str(path), "--format", "json", results=results)
    assert out.returncode == 0, out.stderr[-3000:]
    ((run_id, job_id),) = json.loads(out.stdout)["submitted"].items()
    run_dir = results / "runs" / run_id
    try:
        wait_for_run(run_dir, results / "jobs", timeout=300)
    finally:
        if not (run_dir / "final.json").exists():  # free the cluster's CPUs for the next test
            subprocess.run(["scancel", str(job_id).split("_")[0]], timeout=30)
    status = json.loads(meshctl("status", "slurm_fsdp", "--format", "json", results=results).stdout)
    assert status["counts"] == {"completed": 1}, status
    stored = json.loads((run_dir / "spec.json").read_text())
    assert stored["train"]["strategy"] == "fsdp" and stored["train"]["devices"] == 2

    # both tasks ran as ranks of one process group
    logs = "\n".join(p.read_text(errors="replace") for p in results.rglob(f"{job_id}*_log.err"))
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs, logs[-3000:]

    one = {**stored, "train": {**stored["train"], "strategy": "auto", "devices": 1}}
    final = run_training(one, tmp_path / "one")
    slurm, local = read_metrics(run_dir), read_metrics(tmp_path / "one")
    assert [r["step"] for r in slurm] == [r["step"] for r in local] == list(range(1, 7))
    for a, b in zip(local, slurm):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), a["step"]
    assert json.loads((run_dir / "final.json").read_text())["val_loss"] == pytest.approx(final["val_loss"], rel=1e-5)

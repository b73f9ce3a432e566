"""`meshctl sweep --executor slurm` against a real single-node SLURM (scripts/slurm/start_local_slurm.sh)."""

from __future__ import annotations

import json

import pytest

from meshctl.orchestrate.executors import query_jobs
from meshctl.train.rundir import read_metrics
from tests.orchestrate.helpers import meshctl, tiny_sweep, wait_for, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def status_doc(results, sweep) -> dict:
    out = meshctl("status", sweep, "--format", "json", results=results)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def slurm_sweep(data, name, **train):
    spec = tiny_sweep(data, name=name)
    spec["executor"] = {"kind": "slurm", "max_parallel": 3, "resources": {"timeout_min": 10, "cpus_per_task": 1}}
    spec["train"] = {**spec["train"], **train}
    return spec


def test_sweep_on_slurm_completes_and_status_shows_it(tmp_path, prepared_demo) -> None:
    path = write_spec(tmp_path / "s.yaml", slurm_sweep(prepared_demo, "slurm_small"))
    results = tmp_path / "results"
    out = meshctl("sweep", str(path), "--wait", "--format", "json", results=results, timeout=900)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["counts"] == {"completed": 3}
    job_ids = [r["job_id"] for r in doc["runs"]]
    assert all(r["executor"] == "slurm" for r in doc["runs"])
    assert len({j.split("_")[0] for j in job_ids}) == 1, "one array for one resource shape"
    assert {rec.state for rec in query_jobs(job_ids).values()} == {"COMPLETED"}
    again = json.loads(meshctl("sweep", str(path), "--format", "json", results=results).stdout)
    assert again["submitted"] == {}


def test_cancelled_run_shows_cancelled(tmp_path, prepared_demo) -> None:
    spec = slurm_sweep(prepared_demo, "slurm_cancel", tokens=256000)
    spec["groups"][0]["variants"] = []
    path = write_spec(tmp_path / "s.yaml", spec)
    results = tmp_path / "results"
    assert meshctl("sweep", str(path), results=results).returncode == 0
    wait_for(lambda: status_doc(results, "slurm_cancel")["runs"][0]["state"] == "running", timeout=120)
    run_id = status_doc(results, "slurm_cancel")["runs"][0]["run_id"]
    assert meshctl("cancel", run_id[:6], results=results).returncode == 0
    wait_for(lambda: query_jobs([status_doc(results, "slurm_cancel")["runs"][0]["job_id"]])
             .popitem()[1].state == "CANCELLED", timeout=60)
    assert status_doc(results, "slurm_cancel")["counts"] == {"cancelled": 1}


def test_run_hitting_its_time_limit_is_requeued_and_resumes(tmp_path, prepared_demo) -> None:
    # More training than one attempt holds under a 1-minute limit (SLURM signals ~25 s in): submitit
    # requeues the job and training resumes from last.ckpt (saved every 20 steps), never from scratch.
    spec = slurm_sweep(prepared_demo, "slurm_requeue", tokens=4 * 32 * 200, ckpt_every=20, val_every=100,
                       log_every=10)
    spec["groups"][0]["variants"] = []
    spec["executor"]["resources"] = {"timeout_min": 1, "signal_delay_s": 5, "cpus_per_task": 1,
                                     "max_num_timeout": 12}
    path = write_spec(tmp_path / "s.yaml", spec)
    results = tmp_path / "results"
    out = meshctl("sweep", str(path), "--wait", "--format", "json", results=results, timeout=900)
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)["runs"][0]
    assert run["state"] == "completed"
    record = query_jobs([run["job_id"]])[run["job_id"]]
    assert record.attempts >= 2, "the job was requeued at its time limit"
    steps = [m["step"] for m in read_metrics(results / "runs" / run["run_id"])]
    assert steps == sorted(set(steps)) and steps[-1] == 200
    log = (results / "runs" / run["run_id"] / "logs" / "train.log").read_text()
    assert "resum" in log.lower()

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
    # final.json is written before the job itself exits: accounting follows within seconds
    wait_for(lambda: {rec.state for rec in query_jobs(job_ids).values()} == {"COMPLETED"}, timeout=120)
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


def steps_for(seconds: float, data, tmp_path) -> int:
    """How many steps of the test's tiny run take `seconds` here: a short calibration run with the
    thread count a 1-CPU job gets, so the requeue test outlasts one attempt on fast and slow machines."""
    import os
    import subprocess
    import sys

    import yaml

    run = {"model": "tiny-64", "data": {"path": str(data), "seq_len": 32}, "seed": 0,
           "train": {"global_batch": 4, "micro_batch": 4, "max_steps": 60, "log_every": 10, "val_every": 60,
                     "val_batches": 1, "ckpt_every": 60, "precision": "32", "lr": 3e-3}}
    (tmp_path / "calibrate.yaml").write_text(yaml.safe_dump(run))
    out = subprocess.run([sys.executable, "-m", "meshctl", "train", str(tmp_path / "calibrate.yaml"),
                          "--run-dir", str(tmp_path / "calibrate"), "--format", "json"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    steps_per_s = json.loads(out.stdout)["final"]["tokens_per_s"] / (4 * 32)
    return max(150, int(steps_per_s * seconds))


def test_run_hitting_its_time_limit_is_requeued_and_resumes(tmp_path, prepared_demo) -> None:
    # About 80 s of training under a 1-minute limit (SLURM signals 25-55 s in): no attempt can finish
    # it, so submitit requeues the job and training resumes from last.ckpt, never from scratch.
    steps = steps_for(80, prepared_demo, tmp_path)
    spec = slurm_sweep(prepared_demo, "slurm_requeue", tokens=4 * 32 * steps, ckpt_every=max(10, steps // 20),
                       val_every=steps, log_every=10)
    spec["groups"][0]["variants"] = []
    spec["executor"]["resources"] = {"timeout_min": 1, "signal_delay_s": 5, "cpus_per_task": 1,
                                     "max_num_timeout": 12}
    path = write_spec(tmp_path / "s.yaml", spec)
    results = tmp_path / "results"
    out = meshctl("sweep", str(path), "--wait", "--format", "json", results=results, timeout=1200)
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)["runs"][0]
    assert run["state"] == "completed"
    record = query_jobs([run["job_id"]])[run["job_id"]]
    assert record.attempts >= 2, "the job was requeued at its time limit"
    metrics = read_metrics(results / "runs" / run["run_id"])
    logged = [m["step"] for m in metrics if "train_loss" in m]
    assert logged == list(range(10, steps + 1, 10)) + ([steps] if steps % 10 else [])
    log = (results / "runs" / run["run_id"] / "logs" / "train.log").read_text()
    assert "resuming from" in log


def test_evaluations_run_as_dependent_jobs_after_training(tmp_path, prepared_demo) -> None:
    spec = slurm_sweep(prepared_demo, "slurm_eval")
    spec["groups"][0]["variants"] = [{"structure": "1+1R2+1", "recurrence": "mesh"}]
    spec["eval"] = {"tasks": ["offline"], "limit": 8}
    path = write_spec(tmp_path / "s.yaml", spec)
    results = tmp_path / "results"
    out = meshctl("sweep", str(path), "--wait", "--format", "json", results=results, timeout=900)
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)["runs"]
    assert [run["evals"] for run in runs] == ["3/3"] * len(runs)  # --wait waited for the dependent jobs too
    for run in runs:
        result = results / "runs" / run["run_id"] / "eval" / "meshctl_bpb.json"
        doc = json.loads(result.read_text())
        assert doc["checkpoint_step"] == run["total_steps"]  # evaluated the trained model, not a partial one

"""Files the orchestrator leaves in a run directory beside the training's own (spec.json, final.json):

    failure.json       the training raised: class, message, traceback tail, time (read by `status`)
    eval_failure.json  the sweep's evaluation of the trained run raised (same record; counts if newer than
                       the evaluation's job; removed when an evaluation succeeds or on resubmit)
    eval_job.json      the SLURM job that evaluates the run after training: job id, time (a local lane
                       evaluates in the run's own job)
    cancelled.json     `meshctl cancel` stopped it: time; local jobs leave no scheduler record to say so
    jobs.jsonl         one line per job that took the run up: its SLURM job id or its local lane's
                       submission token, pid, host, time; written by the job itself, whatever the ledger says

A marker counts only if it is newer than the run's latest submission, so a resubmitted run starts clean.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from meshctl.layout import CANCELLED, EVAL_FAILURE, EVAL_JOB, FAILURE, JOB_LOG, read_json


def write_failure(run_dir: Path, exc: BaseException, name: str = FAILURE) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "class": exc.__class__.__name__,
        "message": str(exc).splitlines()[0] if str(exc) else "",
        "traceback": "".join(traceback.format_exception(exc)).splitlines()[-12:],
        "at": time.time(),
    }
    (run_dir / name).write_text(json.dumps(record, indent=2) + "\n")


def write_cancelled(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CANCELLED).write_text(json.dumps({"at": time.time()}) + "\n")


def read_failure(run_dir: Path, name: str = FAILURE) -> dict[str, Any] | None:
    return read_json(run_dir / name)


def read_cancelled(run_dir: Path) -> float | None:
    record = read_json(run_dir / CANCELLED)
    return float(record["at"]) if record and "at" in record else None


def write_eval_job(run_dir: Path, job_id: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / EVAL_JOB).write_text(json.dumps({"job_id": job_id, "at": time.time()}) + "\n")


def read_eval_job(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / EVAL_JOB)


def log_job(run_dir: Path) -> None:
    """Append this job's identity to the run's jobs.jsonl (one short line: atomic as an O_APPEND write)."""
    job = (f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_JOB_ID" in os.environ
           else os.environ.get("SLURM_JOB_ID"))
    record = {"job": job, "submission": os.environ.get("MESHCTL_SUBMISSION"), "pid": os.getpid(),
              "host": socket.gethostname(), "at": time.time()}
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / JOB_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


def clear(run_dir: Path) -> None:
    for name in (FAILURE, EVAL_FAILURE, EVAL_JOB, CANCELLED):
        (run_dir / name).unlink(missing_ok=True)


"""A record of every submission, written before the scheduler hears of it.

`pending/<token>.json` names the runs (in array-task or lane order), the executor, the job name the
scheduler keeps (`meshctl-<sweep>-<token>`) and the holder of the runs' claims. It is written atomically
before sbatch or the lane's process start, and settled (moved to `<token>.json` with the job id) once the
ledger has the jobs. A pending record whose holder is gone is therefore exactly a submission that may
exist at the scheduler without the ledger knowing: the next `meshctl sweep` asks the scheduler for all
such records at once and adopts what it finds (see submit.reconcile).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshctl.layout import PENDING, read_json, run_dir_of, submissions_dir


@dataclass
class SubmissionRecord:
    token: str
    kind: str
    folder: str  # the jobs folder submitit writes to
    name: str  # the job name the scheduler keeps
    runs: list[str]  # run ids, in task / lane order
    owner: str  # claims.Owner token of the submitter
    at: float
    resources: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    job_ids: list[str] = field(default_factory=list)  # filled when settled

    @classmethod
    def new(cls, kind: str, folder: Path, sweep: str, runs: list[str], owner: str, **extra: Any) -> SubmissionRecord:
        token = uuid.uuid4().hex[:12]
        return cls(token, kind, str(folder), f"meshctl-{sweep[:40]}-{token}", runs, owner, time.time(), **extra)

    def run_dir(self, run_id: str) -> Path:
        """A run's directory: the jobs folder is <results>/jobs/<sweep>."""
        return run_dir_of(Path(self.folder).parent.parent, run_id)


def _pending_path(folder: str | Path, token: str) -> Path:
    return submissions_dir(folder) / PENDING / f"{token}.json"


def _write_atomic(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(document, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_pending(record: SubmissionRecord) -> None:
    _write_atomic(_pending_path(record.folder, record.token), asdict(record))


def settle(record: SubmissionRecord, job_ids: list[str]) -> None:
    """The ledger has the jobs (or there were none): keep the record, no longer pending."""
    if job_ids:
        record.job_ids = job_ids
        _write_atomic(submissions_dir(record.folder) / f"{record.token}.json", asdict(record))
    _pending_path(record.folder, record.token).unlink(missing_ok=True)


def pending(folder: str | Path) -> list[SubmissionRecord]:
    return _load(submissions_dir(folder) / PENDING)


def settled(folder: str | Path) -> list[SubmissionRecord]:
    """Every settled record of a jobs folder (what the tests count jobs per run from, with the scheduler)."""
    return _load(submissions_dir(folder))


def _load(directory: Path) -> list[SubmissionRecord]:
    return [SubmissionRecord(**document) for path in sorted(directory.glob("*.json"))
            if (document := read_json(path)) is not None]

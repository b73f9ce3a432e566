"""Where results live and what each file is called: one torch-free module under everything that reads runs.

    <results>/meshctl.sqlite                 the ledger (sweeps, runs, claims, submissions)
    <results>/runs/<run id>/                 a run directory (train/rundir.py is its contract):
        spec.json  metrics.jsonl  final.json  checkpoints/last.ckpt  logs/train.log
        eval/<task>.json  probe/probe.json   results of `meshctl eval` / `meshctl probe`
        failure.json  eval_failure.json  eval_job.json  cancelled.json  jobs.jsonl   the orchestrator's
    <results>/jobs/<sweep>/                  submitit's pickles and logs of the sweep's jobs
    <results>/jobs/<sweep>/submissions/      one record per submission, written before the scheduler
                                             hears of it (pending/) and settled once the ledger has it

Imports nothing of meshctl but its errors, so `meshctl status` and reports find paths without loading
submission code, sweep specs or presets.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from meshctl.errors import BadInput

LEDGER = "meshctl.sqlite"
RUNS, JOBS, SUBMISSIONS, PENDING = "runs", "jobs", "submissions", "pending"
SPEC, METRICS, FINAL, CHECKPOINTS, LAST_CKPT, LOGS = (
    "spec.json", "metrics.jsonl", "final.json", "checkpoints", "last.ckpt", "logs")
EVAL_DIR, PROBE_DIR, PROBE = "eval", "probe", "probe.json"
FAILURE, EVAL_FAILURE, EVAL_JOB, CANCELLED, JOB_LOG = (
    "failure.json", "eval_failure.json", "eval_job.json", "cancelled.json", "jobs.jsonl")
WANDB_ID = "wandb_id"
TAIL_BYTES = 64 * 1024


def eval_result_name(task: str, num_fewshot: int, n_loop: int | None = None) -> str:
    """`<task>[.<n>shot][.loops<K>].json` in a run's eval/ (n_loop None: the trained depth)."""
    return f"{task}{f'.{num_fewshot}shot' if num_fewshot else ''}{f'.loops{n_loop}' if n_loop is not None else ''}.json"


def ledger_path(results_dir: str | Path) -> Path:
    return Path(results_dir) / LEDGER


def run_dir_of(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / RUNS / run_id


def jobs_dir(results_dir: str | Path, name: str) -> Path:
    return Path(results_dir) / JOBS / name


def submissions_dir(jobs_folder: str | Path) -> Path:
    return Path(jobs_folder) / SUBMISSIONS


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / LAST_CKPT


def require_ledger(results_dir: str | Path, hint: str = "run `meshctl sweep SPEC` first or point --results-dir "
                   "(env MESHCTL_RESULTS) at your results") -> Path:
    """The ledger's path; BadInput (exit 2) naming the fix where there is none."""
    path = ledger_path(results_dir)
    if not path.exists():
        raise BadInput(f"--results-dir: no ledger at {path}; {hint}")
    return path


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON object file, or None where it is missing, cut short or not an object."""
    try:
        record = json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def tail_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The latest step's record of metrics.jsonl merged with the latest validation in the file's tail
    (one seek: a status refresh over 1,000 runs reads 1,000 tails, not 1,000 whole files). Only the lines
    that matter are parsed: the steps are found by a regex over the tail, then the line(s) of the
    highest step and the last line with a validation are read as JSON."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return {}
    last = _STEP.search(data, max(0, data.rfind(b"\n", 0, len(data) - 1)))  # the last line's step
    if last is not None and _above(last.group(1)).search(data) is None:
        top = int(last.group(1))  # steps only grew: no scan of every step (the common case)
    else:  # a requeue re-logged steps since its checkpoint, or the last line was cut
        steps = _STEP.findall(data)
        if not steps:
            return {}
        top = max(map(int, steps))
    latest: dict[str, Any] = {}
    for m in re.finditer(rb'"step":\s*%d\b' % top, data):
        if isinstance(record := _line_at(data, m.start()), dict) and record.get("step") == top:
            latest.update(record)  # a step logged twice (train and validation lines, a requeue): later wins
    if not latest:  # the top step's only line was cut (a kill mid-write): the slow, careful way
        return _parse_all(data.decode("utf-8", "replace").splitlines())
    end = len(data)
    while (at := data.rfind(b'"val"', 0, end)) >= 0:
        record = _line_at(data, at)
        if isinstance(record, dict) and isinstance(record.get("val"), dict) and record["val"]:
            latest["last_val"] = record["val"]
            break
        end = max(0, data.rfind(b"\n", 0, at))  # go on before this line
    return latest


_STEP = re.compile(rb'"step":\s*(\d+)')


def _above(digits: bytes) -> re.Pattern[bytes]:
    """A regex for a step written as a number greater than `digits` (no int parsing of every line)."""
    n, text = len(digits), digits.decode()
    longer = [rf"[1-9]\d{{{n},}}"]
    same = [f"{text[:i]}[{int(text[i]) + 1}-9]\\d{{{n - i - 1}}}" for i in range(n) if text[i] != "9"]
    return re.compile(rb'"step":\s*(?:' + "|".join(longer + same).encode() + rb")(?!\d)")


def _line_at(data: bytes, at: int) -> Any:
    start = data.rfind(b"\n", 0, at) + 1
    end = data.find(b"\n", at)
    try:
        return json.loads(data[start:end if end >= 0 else len(data)])
    except ValueError:
        return None  # a partial first line of the tail, or a write cut by a kill


def metric_records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The metrics lines that parse as records with an integer step; a write cut by a kill is skipped."""
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            yield record


def _parse_all(lines: list[str]) -> dict[str, Any]:
    latest: dict[str, Any] = {}
    val: dict[str, Any] | None = None
    for record in metric_records(lines):
        if record["step"] >= latest.get("step", -1):
            latest = {**latest, **record} if record["step"] == latest.get("step") else dict(record)
        if isinstance(record.get("val"), dict) and record["val"]:
            val = record["val"]
    if val is not None:
        latest["last_val"] = val
    return latest

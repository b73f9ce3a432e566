"""The local executor: lanes of sequential runs as submitit LocalExecutor jobs on this machine.

submitit starts every local job at once, so `max_parallel` lanes bound how many runs train together.
A lane's job id is the pid of the shell that runs submitit's controller. The lane's processes carry
their submission's token in the environment (`MESHCTL_SUBMISSION`, inherited from the moment the shell
is forked), so a lane started by a meshctl killed before it recorded the pid is still found in /proc.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from meshctl.orchestrate.claims import process_start
from meshctl.orchestrate.ledger import Submission
from meshctl.orchestrate.records import SubmissionRecord
if TYPE_CHECKING:
    from meshctl.specs.sweep import PlannedRun

TAG = "MESHCTL_SUBMISSION"


class LocalBackend:
    kind = "local"
    evaluates_in_job = True  # a lane evaluates each run right after training it

    def batches(self, runs: list[PlannedRun], max_parallel: int) -> list[list[PlannedRun]]:
        return [runs[i::max_parallel] for i in range(min(max_parallel, len(runs)))]

    def resources(self, batch: list[PlannedRun], max_parallel: int) -> dict:
        return dict(batch[0].resources)

    def submit(self, record: SubmissionRecord, batch: list[PlannedRun], results_dir: Path) -> list[Submission]:
        from meshctl.layout import run_dir_of
        from meshctl.orchestrate.executors import Resources, make_executor
        from meshctl.orchestrate.jobs import RunQueue

        executor = make_executor("local", record.folder, Resources.model_validate(record.resources), name=record.name)
        items = [(r.spec.model_dump_json(), str(run_dir_of(results_dir, r.run_id))) for r in batch]
        with _tagged(record.token):
            job = executor.submit(RunQueue(items, record.evaluation))
        now = time.time()
        return [Submission(r.run_id, self.kind, str(job.job_id), None, record.folder, now) for r in batch]

    def release(self, submissions: list[Submission]) -> None:
        pass  # a lane starts at once: its tag in /proc is its record

    def adopt(self, records: list[SubmissionRecord], spec_of: Callable[[str], str]) -> dict[str, list[Submission]]:
        """Lanes found in /proc by their tag (one pass for all records); a lane whose submitter died before
        submitit moved its pickle into place waits for it (60 s): it is written here."""
        from meshctl.orchestrate.executors import Resources, restore_pickle
        from meshctl.orchestrate.jobs import RunQueue

        lanes = tagged_processes({r.token for r in records})
        out = {}
        for r in records:
            if r.token not in lanes:
                continue
            items = [(spec_of(run_id), str(r.run_dir(run_id))) for run_id in r.runs]
            restore_pickle(r.folder, str(lanes[r.token]), RunQueue(items, r.evaluation), Resources.model_validate(r.resources))
            out[r.token] = [Submission(run_id, self.kind, str(lanes[r.token]), None, r.folder, r.at) for run_id in r.runs]
        return out

    def states(self, submissions: list[Submission]) -> dict[str, str]:
        """A lane's controller alive: RUNNING; gone: its result pickle says how it ended (none: killed)."""
        states = {}
        for sub in {s.job_id: s for s in submissions}.values():
            if _is_lane(sub.job_id):
                states[sub.job_id] = "RUNNING"
            else:
                states[sub.job_id] = _result_state(Path(sub.folder) / f"{sub.job_id}_0_result.pkl")
        return states

    def cancel(self, submissions: list[Submission]) -> None:
        for job_id in sorted({s.job_id for s in submissions}):
            kill_tree(int(job_id))


BACKEND = LocalBackend()


@contextmanager
def _tagged(token: str) -> Iterator[None]:
    """submitit's local executor gives the lane a copy of our environment: put the token in it."""
    before = os.environ.get(TAG)
    os.environ[TAG] = token
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TAG, None)
        else:
            os.environ[TAG] = before


def tagged_processes(tokens: set[str]) -> dict[str, int]:
    """token -> pid of the topmost live process carrying it (the lane's shell), from one pass over /proc."""
    if not tokens:
        return {}
    found: dict[str, dict[int, int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes()
            if TAG.encode() not in environ:
                continue
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] in ("Z", "X"):
            continue
        for entry in environ.split(b"\0"):
            if entry.startswith(TAG.encode() + b"="):
                token = entry.split(b"=", 1)[1].decode()
                if token in tokens:
                    found.setdefault(token, {})[int(proc.name)] = int(stat[1])
    return {token: next(pid for pid, parent in pids.items() if parent not in pids) for token, pids in found.items()}


def _is_lane(job_id: str) -> bool:
    """The pid lives and is a submitit controller (pids are reused)."""
    try:
        pid = int(job_id)
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return b"python" in cmdline and b"submitit" in cmdline  # empty for a zombie


def _result_state(result: Path) -> str:
    if not result.exists():
        return "TIMEOUT"  # gone without a result: killed or lost; resumable
    try:
        outcome = pickle.loads(result.read_bytes())[0]
    except Exception:
        return "FAILED"
    return "COMPLETED" if outcome == "success" else "FAILED"


def kill_tree(pid: int, grace_s: float = 2.0) -> None:
    """Stop a local job: its controller and every descendant (submitit's tasks ignore SIGTERM)."""
    tree = [pid, *_descendants(pid)]
    for sig in (signal.SIGINT, signal.SIGKILL):
        for p in tree:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + grace_s
        while sig == signal.SIGINT and time.time() < deadline and any(process_start(p) is not None for p in tree):
            time.sleep(0.1)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(")")[-1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out

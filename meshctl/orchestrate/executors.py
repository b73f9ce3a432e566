"""The one place meshctl talks to submitit and to SLURM's command-line tools.

`make_executor` turns a `Resources` into a submitit executor: `"local"` runs jobs as processes on
this machine (submitit's LocalExecutor), `"slurm"` submits them with sbatch (AutoExecutor with its
`slurm_*` parameters: job arrays, a signal before the time limit, requeue of Checkpointable jobs).
Both executors take the same `submit` / `map_array` / `submit_array` calls, so the code above this
module has one path.

Scheduler state comes from accounting: `query_states` runs one `sacct` for any number of jobs,
never one per job; `cancel` runs one `scancel`. `max_array_size` and `split_arrays` keep arrays
under the cluster's MaxArraySize, which submitit does not do.

submitit is imported inside the functions that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshctl.errors import BadInput, MeshctlError
from meshctl.executor_kinds import ExecutorKind

if TYPE_CHECKING:
    import submitit

T = TypeVar("T")

DEFAULT_MAX_ARRAY_SIZE = 1000  # SLURM's own default MaxArraySize, used when scontrol cannot tell
SACCT_FIELDS = ("JobID", "State", "Submit", "Start", "End", "ExitCode")
# sbatch options that Resources fields or submitit set; `extra` may not set them behind their back.
_MANAGED_SBATCH_OPTIONS = frozenset(
    "time partition account qos constraint nodes ntasks-per-node cpus-per-task gpus-per-node mem "
    "signal array job-name output error open-mode wckey".split()
)


class Resources(BaseModel):
    """What one job asks of the scheduler. The local executor uses what it can and ignores the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_min: int = Field(
        gt=0,
        description="Wall-clock limit of one attempt, in minutes. Always required: SLURM's default is "
        "5 minutes and submitit's local default 2, both far too short for training.",
    )
    cpus_per_task: int = Field(1, ge=1, description="CPU cores per task (data-loader workers + 1 is typical).")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node; 0 runs on CPU.")
    nodes: int = Field(1, ge=1, description="Nodes per job. The local executor runs on one node only.")
    tasks_per_node: int | None = Field(
        None,
        ge=1,
        description="Processes per node. Lightning's DDP under SLURM wants one task per GPU, so it "
        "defaults to gpus_per_node (at least 1) and must equal it when GPUs are asked for.",
    )
    mem_gb: float | None = Field(
        None, gt=0, description="Memory per node in GB (sbatch --mem); unset takes the partition's default."
    )
    partition: str | None = Field(None, min_length=1, description="SLURM partition; unset takes the default one.")
    account: str | None = Field(None, min_length=1, description="SLURM account to charge.")
    qos: str | None = Field(None, min_length=1, description="SLURM quality of service.")
    constraint: str | None = Field(None, min_length=1, description="SLURM node features, e.g. 'h100|a100'.")
    array_parallelism: int = Field(
        256, ge=1, description="Most tasks of one job array running at once (sbatch --array=0-N%parallelism)."
    )
    signal_delay_s: int | None = Field(
        None,
        ge=0,
        description="SIGUSR2 reaches the job this many seconds before its time limit (SLURM may send it up to "
        "30 s earlier still), so a Checkpointable job is requeued before it is killed. Keep it longer than "
        "a checkpoint takes to write. Default: 120, or a quarter of the limit when that is shorter.",
    )
    max_num_timeout: int = Field(
        3, ge=0, description="How many times a Checkpointable job is requeued after reaching its time limit."
    )
    extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Further sbatch options, e.g. {'exclude': 'node7'} becomes --exclude=node7. "
        "Options that the fields above set are refused.",
    )

    @model_validator(mode="after")
    def _check(self) -> Resources:
        if self.tasks_per_node is None:
            object.__setattr__(self, "tasks_per_node", max(1, self.gpus_per_node))
        elif self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ValueError(
                f"tasks_per_node ({self.tasks_per_node}) must equal gpus_per_node ({self.gpus_per_node}): "
                "Lightning's DDP under SLURM runs one task per GPU; leave tasks_per_node out"
            )
        if self.signal_delay_s is None:
            object.__setattr__(self, "signal_delay_s", min(120, 15 * self.timeout_min))
        elif self.signal_delay_s >= 60 * self.timeout_min:
            raise ValueError(
                f"signal_delay_s ({self.signal_delay_s}) must be shorter than the time limit "
                f"({60 * self.timeout_min} s); lower it or raise timeout_min"
            )
        for key in self.extra:
            option = key.replace("_", "-")
            if not re.fullmatch(r"[a-z][a-z0-9-]*", option):
                raise ValueError(f"extra: {key!r} is not an sbatch option name")
            if option in _MANAGED_SBATCH_OPTIONS:
                raise ValueError(f"extra: --{option} is set by meshctl; use the Resources field instead")
        return self

    def slurm_parameters(self) -> dict[str, object]:
        """The keyword arguments of `AutoExecutor.update_parameters` for SLURM."""
        params: dict[str, object] = {
            "timeout_min": self.timeout_min,
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_signal_delay_s": self.signal_delay_s,
        }
        if self.gpus_per_node:  # --gpus-per-node=0 is refused by clusters without GPUs
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(self, name) is not None:
                params[f"slurm_{name}"] = getattr(self, name)
        if self.extra:
            params["slurm_additional_parameters"] = dict(self.extra)
        return params


def make_executor(
    kind: ExecutorKind, folder: str | Path, resources: Resources, *, name: str = "meshctl"
) -> submitit.Executor:
    """A submitit executor writing its pickles and logs under `folder` (a `%j` in it becomes the job id).

    Local jobs are child processes that outlive the Python process that submitted them, detached
    from its standard streams. A local job's id is the PID of the `sh` that runs submitit's
    controller (submitit names the job's files after it); that shell ignores the SIGINT that
    submitit's `LocalJob.cancel()` sends, so stop a local job by signalling its process tree.
    SLURM jobs need `srun` on PATH (as submitit does).
    """
    import submitit

    if kind == "local":
        if resources.nodes != 1:
            raise BadInput(f"resources.nodes: the local executor runs on one node, not {resources.nodes}; "
                           "set nodes: 1 or use --executor slurm")
        executor = submitit.LocalExecutor(folder, max_num_timeout=resources.max_num_timeout)
        # The job's controller would inherit our stdin/stdout/stderr and hold them open until the job
        # ends, so `meshctl sweep | jq` or a captured subprocess would wait for training to finish.
        # Its own few lines go to a log instead (the job's output has its own files).
        log = next(p for p in (Path(folder), *Path(folder).parents) if "%" not in str(p)) / "local-controllers.log"
        executor.update_parameters(
            timeout_min=resources.timeout_min,
            tasks_per_node=resources.tasks_per_node,
            gpus_per_node=resources.gpus_per_node,
            signal_delay_s=resources.signal_delay_s,
            # ignored signals stay ignored across exec (and Python then installs no KeyboardInterrupt):
            # Ctrl-C on `meshctl sweep --wait` or a closed terminal must not stop the jobs
            setup=["trap '' INT HUP", f"exec </dev/null >>{shlex.quote(str(log))} 2>&1",
                   *_thread_setup(resources.cpus_per_task)],
        )
        return executor
    if kind == "slurm":
        if shutil.which("srun") is None:
            raise MeshctlError("no SLURM on this machine (srun is not on PATH); use --executor local, "
                               "or start one with scripts/slurm/start_local_slurm.sh")
        executor = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=resources.max_num_timeout)
        executor.update_parameters(name=name, slurm_setup=_thread_setup(resources.cpus_per_task),
                                   **resources.slurm_parameters())
        return executor
    raise BadInput(f"executor: unknown kind {kind!r}; use local or slurm")


def restore_pickle(folder: str | Path, job_id: str, job: object, resources: Resources) -> bool:
    """Write a job's submitted pickle where submitit would have moved it after starting the job (sbatch,
    or a local controller): a submitter killed in between leaves the job waiting for it (a local
    controller gives up after 60 s; a held SLURM task would fail once released). True if it was missing."""
    import submitit
    from submitit.core.utils import JobPaths

    path = JobPaths(folder, job_id=job_id).submitted_pickle
    if path.exists():
        return False
    delayed = submitit.helpers.DelayedSubmission(job)
    delayed.set_timeout(resources.timeout_min, resources.max_num_timeout)
    tmp = path.with_name(f".{path.name}.tmp")
    delayed.dump(tmp)
    tmp.replace(path)  # the waiting job never reads half a pickle
    return True


def _thread_setup(cpus_per_task: int) -> list[str]:
    """Each task's intra-op threads = its CPUs: torch's default (all cores) oversubscribes a node
    shared by several jobs, which on 2 cores made steps ~20x slower in our measurements."""
    return [f"export OMP_NUM_THREADS={cpus_per_task} MKL_NUM_THREADS={cpus_per_task}"]


def max_array_size() -> int:
    """Most tasks one job array may hold on this cluster (MaxArraySize); 1000 when scontrol cannot tell."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    if match is None:
        return DEFAULT_MAX_ARRAY_SIZE
    # Indices run 0..MaxArraySize-1 and submitit numbers tasks from 0. 0 disables arrays: one job each.
    return max(1, int(match.group(1)))


def split_arrays(items: Sequence[T], max_size: int) -> list[list[T]]:
    """`items` in order, cut into consecutive chunks of at most `max_size` (one job array each)."""
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    return [list(items[i : i + max_size]) for i in range(0, len(items), max_size)]


@dataclass(frozen=True)
class JobRecord:
    """The latest attempt of one job (or array task) as accounting knows it."""

    job_id: str  # "123", or "123_4" for task 4 of array 123
    state: str  # COMPLETED, RUNNING, PENDING, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, ... ("by <uid>" dropped)
    attempts: int  # 1 + the requeues accounting shows before this attempt
    exit_code: str  # "0:0" is exit status 0, signal 0
    start: str  # ISO time, or "Unknown"/"None" when not started
    end: str


def _expand_job_id(field: str) -> list[str]:
    """sacct's JobID column -> job ids: '123', '123_4', and pending array chunks '123_[4-6,9%2]'."""
    match = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", field)
    if match is None:
        return [field]
    base, ranges = match.groups()
    ids = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        ids.extend(f"{base}_{i}" for i in range(int(low), int(high or low) + 1))
    return ids


def parse_sacct(text: str) -> dict[str, JobRecord]:
    """Parse `sacct --parsable2 -o JobID,State,Submit,Start,End,ExitCode` (header line included).

    Step rows (`123.batch`) are skipped. Where a job appears more than once (`--duplicates`: earlier
    attempts of a requeued job, or an id SLURM reused), the latest submission wins.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    header = lines[0].split("|")
    missing = [name for name in SACCT_FIELDS if name not in header]
    if missing:
        raise MeshctlError(f"sacct output lacks the column(s) {', '.join(missing)}: {lines[0]!r}")
    rows: dict[str, list[dict[str, str]]] = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split("|")))
        if "." in row["JobID"]:
            continue
        for job_id in _expand_job_id(row["JobID"]):
            rows.setdefault(job_id, []).append(row)
    records = {}
    for job_id, attempts in rows.items():
        # Stable sort: on equal submit times, sacct's own order (oldest first) decides.
        attempts = sorted(attempts, key=lambda r: r["Submit"])
        latest = attempts[-1]
        requeues = sum(r["State"].startswith("REQUEUE") for r in attempts[:-1])
        records[job_id] = JobRecord(
            job_id=job_id,
            state=latest["State"].split(" ")[0] or "UNKNOWN",
            attempts=1 + requeues,
            exit_code=latest["ExitCode"],
            start=latest["Start"],
            end=latest["End"],
        )
    return records


def query_jobs(job_ids: Sequence[str]) -> dict[str, JobRecord]:
    """Accounting records of `job_ids` from one `sacct` call. Jobs sacct does not know yet are absent."""
    if not job_ids:
        return {}
    # Ask for whole arrays: sacct does not find a task (`123_4`) that still waits inside a
    # pending chunk (`123_[4-9]`) when asked for it by name.
    bases = list(dict.fromkeys(job_id.split("_")[0] for job_id in job_ids))
    command = ["sacct", "--allocations", "--duplicates", "--parsable2", "--format", ",".join(SACCT_FIELDS),
               "--jobs", ",".join(bases)]
    out = _run(command)
    records = parse_sacct(out)
    return {job_id: records[job_id] for job_id in job_ids if job_id in records}


def query_states(job_ids: Sequence[str]) -> dict[str, str]:
    """State of every job in `job_ids` from one `sacct` call; UNKNOWN for jobs it does not know (yet)."""
    records = query_jobs(job_ids)
    return {job_id: records[job_id].state if job_id in records else "UNKNOWN" for job_id in job_ids}


def cancel(job_ids: Sequence[str]) -> None:
    """Cancel jobs or array tasks with one `scancel`; finished jobs are left as they are."""
    if job_ids:
        _run(["scancel", *job_ids])


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise MeshctlError(f"{command[0]} not found: this machine has no SLURM client tools") from None
    except subprocess.TimeoutExpired:
        raise MeshctlError(f"{command[0]} did not answer within 120 s") from None
    if done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[0]
        raise MeshctlError(f"{command[0]} failed: {reason}")
    return done.stdout

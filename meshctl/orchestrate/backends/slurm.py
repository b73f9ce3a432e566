"""The SLURM executor: one job array per resource shape (split at MaxArraySize), evaluations as a
dependent array (`aftercorr`: evaluation task i starts once training task i succeeded).

Every array is named after its submission record (`meshctl-<sweep>-<token>`; the evaluation array
`meshctl-eval-<sweep>-<token>`) and submitted held (`sbatch --hold`): nothing runs until the ledger has
the job ids and `release` lets it go. A meshctl killed between sbatch and that point leaves a held array
that `adopt` finds by name with one `squeue`, completes (the task pickles submitit had not moved yet,
the evaluation array it had not submitted) and hands back for the ledger; then it is released.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshctl.layout import run_dir_of
from meshctl.orchestrate.ledger import Submission
from meshctl.orchestrate.records import SubmissionRecord

if TYPE_CHECKING:
    from meshctl.specs.sweep import PlannedRun


class SlurmBackend:
    kind = "slurm"
    evaluates_in_job = False  # evaluations are a dependent array (eval_job.json)

    def batches(self, runs: list[PlannedRun], max_parallel: int) -> list[list[PlannedRun]]:
        from meshctl.orchestrate.executors import Resources, max_array_size, split_arrays

        groups: dict[str, list[PlannedRun]] = {}
        for run in runs:  # one array per resource signature (a SLURM array shares one resource request)
            groups.setdefault(Resources.model_validate(run.resources).model_dump_json(), []).append(run)
        limit = max_array_size()
        return [chunk for members in groups.values() for chunk in split_arrays(members, limit)]

    def resources(self, batch: list[PlannedRun], max_parallel: int) -> dict[str, Any]:
        resources = dict(batch[0].resources)
        resources.setdefault("array_parallelism", max_parallel)
        return resources

    def submit(self, record: SubmissionRecord, batch: list[PlannedRun], results_dir: Path) -> list[Submission]:
        from meshctl.orchestrate.jobs import TrainingJob

        executor = _executor(record, record.name)
        jobs = executor.submit_array([TrainingJob(r.spec.model_dump_json(), str(run_dir_of(results_dir, r.run_id)))
                                      for r in batch])
        now = time.time()
        subs = [Submission(r.run_id, self.kind, str(j.job_id), i, record.folder, now)
                for i, (r, j) in enumerate(zip(batch, jobs))]
        if record.evaluation is not None:
            _submit_evaluations(record, subs)
        return subs

    def release(self, submissions: list[Submission]) -> None:
        """One `scontrol release` for all. Releasing a running or ended job is a no-op, one SLURM has
        forgotten is no error here; any other failure raises with the record still pending, so the next
        `meshctl sweep` adopts and releases the jobs (a held job never starts by itself)."""
        from meshctl.errors import MeshctlError

        arrays = sorted({s.job_id.split("_")[0] for s in submissions})
        if not arrays:
            return
        try:
            done = subprocess.run(["scontrol", "release", ",".join(arrays)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise MeshctlError(f"scontrol release {','.join(arrays)}: {exc}; run `meshctl sweep` again to release them") from None
        said = (done.stderr + done.stdout).strip()
        if done.returncode != 0 and "Invalid job id" not in said:
            raise MeshctlError(f"scontrol release {','.join(arrays)} failed: {said.splitlines()[0] if said else done.returncode}; "
                               "run `meshctl sweep` again to release them")

    def adopt(self, records: list[SubmissionRecord], spec_of: Callable[[str], str]) -> dict[str, list[Submission]]:
        names = [r.name for r in records] + [_eval_name(r) for r in records if r.evaluation is not None]
        found = _squeue_by_name(names) if names else {}
        out: dict[str, list[Submission]] = {}
        for record in records:
            tasks = found.get(record.name, {})
            subs = [Submission(run_id, self.kind, tasks[i], i if "_" in tasks[i] else None, record.folder, record.at)
                    for i, run_id in enumerate(record.runs) if i in tasks]
            if not subs:
                continue
            _restore_pickles(record, subs, spec_of)
            if record.evaluation is not None:
                evals = found.get(_eval_name(record), {})
                if evals:
                    from meshctl.orchestrate.markers import write_eval_job

                    for sub in subs:
                        write_eval_job(record.run_dir(sub.run_id), evals[sub.array_index or 0])
                else:
                    _submit_evaluations(record, subs)
            out[record.token] = subs
        return out

    def states(self, submissions: list[Submission]) -> dict[str, str]:
        from meshctl.orchestrate.executors import query_states

        return query_states(list(dict.fromkeys(s.job_id for s in submissions)))  # one sacct for all

    def cancel(self, submissions: list[Submission]) -> None:
        from meshctl.orchestrate.executors import cancel

        cancel(sorted({s.job_id for s in submissions}))  # one scancel for all


BACKEND = SlurmBackend()


def _executor(record: SubmissionRecord, name: str, hold: bool = True, **changes: Any) -> Any:
    from meshctl.orchestrate.executors import Resources, make_executor

    resources = Resources.model_validate(record.resources)
    extra = {**resources.extra, **changes.pop("extra", {}), **({"hold": True} if hold else {})}
    return make_executor("slurm", record.folder, resources.model_copy(update={**changes, "extra": extra}), name=name)


def _eval_name(record: SubmissionRecord) -> str:
    return record.name.replace("meshctl-", "meshctl-eval-", 1)


def _submit_evaluations(record: SubmissionRecord, subs: list[Submission]) -> None:
    """An array of evaluations, task i starting once training task i succeeded (aftercorr); one GPU
    each. They are not ledger runs: their results land in the run directories (`eval/*.json`)."""
    from meshctl.orchestrate.jobs import EvalJob
    from meshctl.orchestrate.markers import write_eval_job

    array_id = subs[0].job_id.split("_")[0]
    gpus = int(record.resources.get("gpus_per_node", 0) or 0)
    extra = {**record.resources.get("extra", {}), "dependency": f"aftercorr:{array_id}", "kill_on_invalid_dep": "yes"}
    # not held: it waits on the (held) training array anyway
    executor = _executor(record, _eval_name(record), hold=False, nodes=1, gpus_per_node=min(1, gpus),
                         tasks_per_node=1, extra=extra)
    run_dirs = [record.run_dir(s.run_id) for s in subs]
    for run_dir, job in zip(run_dirs, executor.submit_array([EvalJob(str(d), record.evaluation) for d in run_dirs])):
        write_eval_job(run_dir, str(job.job_id))  # for status and --wait


def _squeue_by_name(names: list[str]) -> dict[str, dict[int, str]]:
    """name -> {array index (0 for a lone job): job id} of every job squeue knows by these names."""
    from meshctl.orchestrate.executors import _run

    out = _run(["squeue", "--noheader", "--array", "--states=all", f"--name={','.join(names)}",
                "--format=%i|%j"])
    found: dict[str, dict[int, str]] = {}
    for line in out.splitlines():
        if "|" not in line:
            continue
        job_id, name = line.strip().split("|", 1)
        index = int(job_id.split("_")[1]) if "_" in job_id else 0
        found.setdefault(name, {})[index] = job_id
    return found


def _restore_pickles(record: SubmissionRecord, subs: list[Submission], spec_of: Callable[[str], str]) -> None:
    """submitit moves each task's pickle into place after sbatch returns: a kill in between leaves a
    held task without one."""
    from meshctl.orchestrate.executors import Resources, restore_pickle
    from meshctl.orchestrate.jobs import TrainingJob

    resources = Resources.model_validate(record.resources)
    for sub in subs:
        restore_pickle(record.folder, sub.job_id, TrainingJob(spec_of(sub.run_id), str(record.run_dir(sub.run_id))),
                       resources)

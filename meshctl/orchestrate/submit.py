"""`meshctl sweep`: register a sweep's runs in the ledger and submit the ones that need it.

Idempotent by construction: runs are content-addressed, so re-running a sweep finds its runs again.
Completed and in-flight runs are left alone; new and incomplete ones are submitted (an incomplete run
resumes from its checkpoint); failed and cancelled ones only with `retry_failed`; `force` also re-runs
completed ones after moving their directory aside (nothing is deleted). Runs are claimed in one ledger
transaction before submission, so concurrent `meshctl sweep` processes never submit a run twice.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshctl.errors import BadInput, MeshctlError
from meshctl.orchestrate.ledger import Ledger, Submission
from meshctl.orchestrate.status import ACTIVE, observe
from meshctl.specs.sweep import PlannedRun, SweepSpec, expand, sweep_hash

RESUBMITTABLE = ("new", "incomplete")
RETRYABLE = ("failed", "cancelled")


@dataclass
class SubmitReport:
    submitted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # run id -> state it was left in
    job_ids: dict[str, str] = field(default_factory=dict)


def ledger_path(results_dir: Path) -> Path:
    return Path(results_dir) / "meshctl.sqlite"


def run_dir_of(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / "runs" / run_id


def check_data(planned: list[PlannedRun]) -> None:
    """Refuse before submitting: every data path prepared, tokenizer vocab within every model's, and in
    samples mode entries of seq_len + 1 tokens (checked on the first and last: a job would find out later)."""
    from meshctl.data.manifest import Manifest, load_manifest

    checked: dict[str, Manifest] = {}
    for run in planned:
        data = run.spec.data
        if data.path not in checked:
            try:
                checked[data.path] = load_manifest(data.path)
            except BadInput as exc:
                raise BadInput(f"data.path: {exc}; prepare it with `meshctl data prepare ... --out {data.path}`") from None
        manifest = checked[data.path]
        mismatch = run.spec.model_spec().embedding_mismatch(manifest.tokenizer.vocab_size)
        if mismatch:
            raise BadInput(f"{run.where}: data.path {data.path}: {mismatch}")
        if data.mode == "samples":
            sizes = manifest.dataset(data.path, data.split).sizes
            other = next((int(n) for n in sizes[[0, -1]] if n != data.seq_len + 1), None) if len(sizes) else None
            if other is not None:
                raise BadInput(
                    f"{run.where}: data.mode samples reads entries of data.seq_len + 1 = {data.seq_len + 1} tokens, "
                    f"but {data.path} holds {other}-token entries; set data.seq_len: {other - 1} or data.mode: packed"
                )


def check_eval(sweep: SweepSpec) -> None:
    """Refuse before submitting an evaluation plan that could only fail after every run has trained:
    lm-eval missing, or a task name it does not know."""
    if sweep.eval is None:
        return
    from meshctl.analysis.evaluation import check_task_names, expand_tasks, require_lm_eval

    try:
        require_lm_eval()
    except MeshctlError as exc:
        raise BadInput(f"eval: {exc}") from None
    check_task_names(expand_tasks(sweep.eval.tasks), where="eval.tasks")


def wants_submission(state: str, live_claim: bool, retry_failed: bool, force: bool) -> bool:
    if live_claim or state in ACTIVE:
        return False  # never duplicate a run in flight
    if state in RESUBMITTABLE:
        return True
    if state in RETRYABLE:
        return retry_failed or force
    return state == "completed" and force


def submit_sweep(
    sweep: SweepSpec, raw: dict[str, Any], source: str, results_dir: Path, *,
    executor: str | None = None, retry_failed: bool = False, force: bool = False,
) -> SubmitReport:
    planned = expand(sweep, source)
    check_data(planned)
    check_eval(sweep)
    kind = executor or sweep.executor.kind
    results_dir = Path(results_dir).absolute()
    by_id = {p.run_id: p for p in planned}
    report = SubmitReport()
    with Ledger(ledger_path(results_dir)) as ledger:
        ledger.register_sweep(
            sweep.name, sweep_hash(raw), raw, source,
            [(p.run_id, p.spec.model_dump(mode="json"), run_dir_of(results_dir, p.run_id), p.labels) for p in planned],
        )
        current = {s.run_id: s for s in observe(ledger, sweep.name)}
        claimed = ledger.claim(
            [p.run_id for p in planned],
            # the ledger's state was just refreshed by observe(); a concurrent sweep's claim or record wins
            lambda state, live: wants_submission(state, live, retry_failed, force),
        )
        report.skipped = {rid: current[rid].state for rid in by_id if rid not in claimed}
        if not claimed:
            return report
        try:
            for rid in claimed:
                if current[rid].state == "completed":
                    _move_aside(Path(current[rid].run_dir))
            submissions = submit_planned(kind, sweep.name, [by_id[r] for r in claimed], results_dir,
                                         sweep.executor.max_parallel,
                                         sweep.eval.model_dump() if sweep.eval is not None else None)
        except BaseException:
            ledger.release(claimed)
            raise
        ledger.record_submissions(submissions)
        report.submitted = [s.run_id for s in submissions]
        report.job_ids = {s.run_id: s.job_id for s in submissions}
    return report


def _move_aside(run_dir: Path) -> None:
    if run_dir.exists():
        shutil.move(str(run_dir), str(run_dir.with_name(f"{run_dir.name}.old-{int(time.time())}")))


def submit_planned(kind: str, folder_name: str, runs: list[PlannedRun], results_dir: Path,
                   max_parallel: int, evaluation: dict[str, Any] | None = None) -> list[Submission]:
    """Submit runs through submitit: local lanes of sequential runs, or SLURM arrays per resource shape
    (with a dependent evaluation array when an evaluation plan is given)."""
    from meshctl.orchestrate.executors import Resources, make_executor, max_array_size, split_arrays
    from meshctl.orchestrate.jobs import RunQueue, TrainingJob

    folder = results_dir / "jobs" / folder_name
    now = time.time()
    out: list[Submission] = []

    def payload(run: PlannedRun) -> tuple[str, str]:
        return run.spec.model_dump_json(), str(run_dir_of(results_dir, run.run_id))

    if kind == "local":
        # submitit's local executor starts every job at once: lanes of sequential runs bound concurrency
        lanes = [runs[i:: max_parallel] for i in range(min(max_parallel, len(runs)))]
        for lane in lanes:
            resources = Resources.model_validate(lane[0].resources)
            executor = make_executor("local", folder, resources, name=f"meshctl-{folder_name}")
            job = executor.submit(RunQueue([payload(r) for r in lane], evaluation))
            out += [Submission(r.run_id, "local", str(job.job_id), None, str(folder), now) for r in lane]
        return out

    groups: dict[str, list[PlannedRun]] = {}
    for run in runs:  # one array per resource signature (a SLURM array shares one resource request)
        groups.setdefault(Resources.model_validate(run.resources).model_dump_json(), []).append(run)
    limit = max_array_size()
    for signature, members in groups.items():
        resources = Resources.model_validate_json(signature)
        if "array_parallelism" not in members[0].resources:
            resources = resources.model_copy(update={"array_parallelism": max_parallel})
        executor = make_executor("slurm", folder, resources, name=f"meshctl-{folder_name}")
        for chunk in split_arrays(members, limit):
            jobs = executor.submit_array([TrainingJob(*payload(r)) for r in chunk])
            out += [Submission(r.run_id, "slurm", str(j.job_id), i, str(folder), now)
                    for i, (r, j) in enumerate(zip(chunk, jobs))]
            if evaluation is not None:
                _submit_evaluations(folder, folder_name, resources, jobs, chunk, results_dir, evaluation)
    return out


def _submit_evaluations(folder: Path, folder_name: str, resources: Any, jobs: list[Any], chunk: list[PlannedRun],
                        results_dir: Path, evaluation: dict[str, Any]) -> None:
    """An array of evaluations, task i starting once training task i succeeded (aftercorr); one GPU
    each. They are not ledger runs: their results land in the run directories (`eval/*.json`)."""
    from meshctl.orchestrate.executors import make_executor
    from meshctl.orchestrate.jobs import EvalJob
    from meshctl.orchestrate.markers import write_eval_job

    array_id = str(jobs[0].job_id).split("_")[0]
    eval_resources = resources.model_copy(update={
        "nodes": 1, "gpus_per_node": min(1, resources.gpus_per_node), "tasks_per_node": 1,
        "extra": {**resources.extra, "dependency": f"aftercorr:{array_id}", "kill_on_invalid_dep": "yes"},
    })
    executor = make_executor("slurm", folder, eval_resources, name=f"meshctl-eval-{folder_name}")
    run_dirs = [run_dir_of(results_dir, r.run_id) for r in chunk]
    for run_dir, job in zip(run_dirs, executor.submit_array([EvalJob(str(d), evaluation) for d in run_dirs])):
        write_eval_job(run_dir, str(job.job_id))  # for status and --wait

"""What a submitted job runs: training of one run, or of a queue of runs (a local lane).

Both are submitit Checkpointables. On a time-limit or preemption signal submitit calls `checkpoint`,
which returns the same callable: the requeued job starts `run_training` again, and that resumes from the
run's `last.ckpt` (saved every `ckpt_every` steps — never inside the signal handler, see
shared/reference/orchestration.md §2). A finished run is skipped because `final.json` exists.
A run that raises leaves `failure.json` in its run directory (see `markers`) for `status`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meshctl.orchestrate.markers import EVAL_FAILURE, log_job, write_failure


class TrainingJob:
    """Train one run (a SLURM array task)."""

    def __init__(self, spec_json: str, run_dir: str) -> None:
        self.spec_json, self.run_dir = spec_json, run_dir

    def __call__(self) -> dict[str, Any]:
        return train_recording_failure(self.spec_json, Path(self.run_dir))

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(TrainingJob(self.spec_json, self.run_dir))


class EvalJob:
    """Evaluate one trained run (`meshctl eval`); on SLURM a dependent array task after its training."""

    def __init__(self, run_dir: str, plan: dict[str, Any]) -> None:
        self.run_dir, self.plan = run_dir, plan

    def __call__(self) -> list[dict[str, Any]]:
        from meshctl.analysis.evaluation import evaluate_run

        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        run_dir = Path(self.run_dir)
        try:
            # bootstrap_iters=0: lm-eval bootstraps stderrs in a multiprocessing pool, which hung inside a
            # SLURM task here (a forked child of a threaded process); `meshctl eval` gives stderrs on demand
            documents = evaluate_run(run_dir, self.plan["tasks"], num_fewshot=self.plan["num_fewshot"],
                                     limit=self.plan.get("limit"), device=device, bootstrap_iters=0)
        except Exception as exc:  # for `status`: these jobs are not ledger runs
            write_failure(run_dir, exc, EVAL_FAILURE)
            raise
        (run_dir / EVAL_FAILURE).unlink(missing_ok=True)
        return documents


class RunQueue:
    """Train several runs one after another (a local lane: the local executor's concurrency limit), each
    evaluated right after it trains when a plan is given. A failed run does not stop the lane; the lane
    fails at the end if any run (or evaluation) failed."""

    def __init__(self, items: list[tuple[str, str]], evaluation: dict[str, Any] | None = None) -> None:
        self.items, self.evaluation = items, evaluation

    def __call__(self) -> dict[str, Any]:
        results, failed = {}, []
        for spec_json, run_dir in self.items:
            try:
                results[run_dir] = train_recording_failure(spec_json, Path(run_dir))
                if self.evaluation is not None:
                    EvalJob(run_dir, self.evaluation)()
            except Exception as exc:  # recorded in the run dir; go on with the next run
                failed.append(f"{Path(run_dir).name}: {exc.__class__.__name__}")
        if failed:
            raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(failed)}")
        return results

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(RunQueue(self.items, self.evaluation))


def train_recording_failure(spec_json: str, run_dir: Path) -> dict[str, Any]:
    from meshctl.specs.run import RunSpec
    from meshctl.train.job import run_training

    if _task_rank() > 0:  # the other ranks of a multi-task job: its first task holds the run for the job
        return run_training(RunSpec.model_validate_json(spec_json), run_dir)
    log_job(run_dir)  # before the lock: a duplicate job is counted too (tests count jobs per run from this)
    with exclusive(run_dir) as owned:
        if not owned:  # a duplicate job (e.g. a submitter killed before it recorded the first one)
            return {"skipped": f"another job is training {run_dir}"}
        try:
            return run_training(RunSpec.model_validate_json(spec_json), run_dir)
        except Exception as exc:
            write_failure(run_dir, exc)
            raise


def _task_rank() -> int:
    """This task's rank within its job: SLURM's task id when the job runs several (DDP/FSDP ranks)."""
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return int(os.environ.get("SLURM_PROCID", "0") or 0)
    return 0


@contextmanager
def exclusive(run_dir: Path) -> Iterator[bool]:
    """At most one process trains a run directory, whatever the ledger knows: an flock on `.lock`,
    released by the kernel when the process dies (no stale locks after a kill or a requeue)."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

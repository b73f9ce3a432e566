"""What the orchestrator asks of an executor. Submission, status and cancel are written once over this.

A batch is what one scheduler submission carries (a SLURM job array, a local lane of sequential runs);
every batch is described by a `SubmissionRecord` written before it is submitted, and the scheduler keeps
the record's token (SLURM: the job name; a local lane: its processes' environment), so `adopt` can find
a batch whose submitter died before the ledger heard of it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from meshctl.orchestrate.ledger import Submission
    from meshctl.orchestrate.records import SubmissionRecord
    from meshctl.specs.sweep import PlannedRun


class Backend(Protocol):
    kind: str
    evaluates_in_job: bool  # a run's evaluation runs in its own job (else in one named by eval_job.json)

    def batches(self, runs: list[PlannedRun], max_parallel: int) -> list[list[PlannedRun]]:
        """The runs cut into what one submission each carries, in order."""

    def resources(self, batch: list[PlannedRun], max_parallel: int) -> dict[str, Any]:
        """The resources one batch is submitted with (as Resources fields)."""

    def submit(self, record: SubmissionRecord, batch: list[PlannedRun], results_dir: Path) -> list[Submission]:
        """Submit one batch (and its evaluation jobs where `record.evaluation` is set) under the record's
        name; nothing it submits may start work before `release` (a job must not outrun its record)."""

    def release(self, submissions: list[Submission]) -> None:
        """Let jobs the ledger now knows start (SLURM: they were submitted held)."""

    def adopt(self, records: list[SubmissionRecord], spec_of: Callable[[str], str]) -> dict[str, list[Submission]]:
        """Jobs of these records that exist (record token -> its runs' jobs), from one scheduler query for all, made whole (what a kill
        mid-submission left undone) so that `release` can start them. `spec_of(run_id)` is a run's spec JSON."""

    def states(self, submissions: list[Submission]) -> dict[str, str]:
        """The scheduler's word for each job id (SLURM's names: RUNNING, COMPLETED, ...), one query for all."""

    def cancel(self, submissions: list[Submission]) -> None:
        """Stop these jobs (one call where the scheduler allows)."""

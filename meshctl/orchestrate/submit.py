"""`meshctl sweep`: register a sweep's runs in the ledger and submit the ones that need it.

Idempotent by construction: runs are content-addressed, so re-running a sweep finds its runs again.
Completed and in-flight runs are left alone; new and incomplete ones are submitted (an incomplete run
resumes from its checkpoint); failed and cancelled ones only with `retry_failed`; `force` also re-runs
completed ones after moving their directory aside (nothing is deleted).

Never twice, whatever is killed when:
1. reconcile: submission records still pending from a submitter that is gone (written before each
   sbatch / lane start, see records.py) are looked up at the scheduler in one query; the jobs found are
   adopted into the ledger and released, so their runs count as in flight and are not submitted again;
2. claim: the runs to submit are claimed in one ledger transaction, each claim naming its holder (host,
   pid, process start: a dead holder's claims are taken over at once; claims.py);
3. submit batch by batch: record written, job submitted (SLURM: held), ledger told, job released.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshctl.errors import BadInput
from meshctl.layout import jobs_dir, ledger_path, run_dir_of  # noqa: F401  (also imported from here)
from meshctl.orchestrate import claims, records
from meshctl.orchestrate.backends import Backend, backend
from meshctl.orchestrate.ledger import CLAIM_TIMEOUT_S, Ledger, Submission
from meshctl.orchestrate.status import ACTIVE, observe

if TYPE_CHECKING:
    from meshctl.specs.sweep import PlannedRun, SweepSpec

RESUBMITTABLE = ("new", "incomplete")
RETRYABLE = ("failed", "cancelled")


@dataclass
class SubmitReport:
    submitted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # run id -> state it was left in
    job_ids: dict[str, str] = field(default_factory=dict)
    adopted: list[str] = field(default_factory=list)  # runs whose unrecorded jobs were found and adopted


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
    evaluation: dict[str, Any] | None = None,
) -> SubmitReport:
    """`evaluation` is the sweep's eval plan with its task aliases expanded (the CLI checks and expands
    them; default: the plan as written)."""
    from meshctl.specs.sweep import expand, sweep_hash

    planned = expand(sweep, source)
    check_data(planned)
    chosen = backend(executor or sweep.executor.kind)
    if evaluation is None and sweep.eval is not None:
        evaluation = sweep.eval.model_dump()
    results_dir = Path(results_dir).absolute()
    folder = jobs_dir(results_dir, sweep.name)
    by_id = {p.run_id: p for p in planned}
    report = SubmitReport()
    with Ledger(ledger_path(results_dir)) as ledger:
        ledger.register_sweep(
            sweep.name, sweep_hash(raw), raw, source,
            [(p.run_id, p.spec.model_dump(mode="json"), run_dir_of(results_dir, p.run_id), p.labels) for p in planned],
            evaluation=evaluation,
        )
        report.adopted = reconcile(ledger, folder)
        seen = ledger.submission_marks()  # before observing: a submission recorded after it voids a claim
        current = {s.run_id: s for s in observe(ledger, sweep.name)}
        owner = claims.me()
        with ledger.lease(owner):
            claimed = ledger.claim(
                [p.run_id for p in planned],
                # the ledger's state was just refreshed by observe(); a concurrent sweep's claim or record wins
                lambda state, live: wants_submission(state, live, retry_failed, force), owner=owner, seen=seen,
            )
            report.skipped = {rid: current[rid].state for rid in by_id if rid not in claimed}
            if not claimed:
                return report
            try:
                for rid in claimed:
                    if current[rid].state == "completed":
                        _move_aside(Path(current[rid].run_dir))
                submissions = submit_planned(ledger, chosen, owner, sweep.name, [by_id[r] for r in claimed],
                                             results_dir, sweep.executor.max_parallel, evaluation)
            finally:
                ledger.release(claimed, owner)  # recorded runs dropped their claims already; this frees the rest
    report.submitted = [s.run_id for s in submissions]
    report.job_ids = {s.run_id: s.job_id for s in submissions}
    return report


def reconcile(ledger: Ledger, folder: Path) -> list[str]:
    """Adopt the jobs of submissions whose submitter died before the ledger heard of them (one scheduler
    query per executor for all of them); settle their records. Returns the runs adopted."""
    now = time.time()
    leftovers = [r for r in records.pending(folder) if not claims.live(r.owner, r.at, now, CLAIM_TIMEOUT_S)]
    adopted: list[str] = []
    for kind in sorted({r.kind for r in leftovers}):
        chosen = backend(kind)
        mine = [r for r in leftovers if r.kind == kind]
        found = chosen.adopt(mine, lambda run_id: json.dumps(ledger.run(run_id).spec))
        subs = [s for record in mine for s in found.get(record.token, [])]
        ledger.record_submissions(subs, detail="adopted")
        chosen.release(subs)
        for record in mine:
            records.settle(record, [s.job_id for s in found.get(record.token, [])])
        adopted += [s.run_id for s in subs]
    return adopted


def _move_aside(run_dir: Path) -> None:
    if run_dir.exists():
        shutil.move(str(run_dir), str(run_dir.with_name(f"{run_dir.name}.old-{int(time.time())}")))


def submit_planned(ledger: Ledger, chosen: Backend, owner: claims.Owner, folder_name: str, runs: list[PlannedRun],
                   results_dir: Path, max_parallel: int, evaluation: dict[str, Any] | None = None) -> list[Submission]:
    """Submit claimed runs batch by batch (a SLURM array, a local lane): record, submit, ledger, release."""
    folder = jobs_dir(results_dir, folder_name)
    out: list[Submission] = []
    for batch in chosen.batches(runs, max_parallel):
        record = records.SubmissionRecord.new(
            chosen.kind, folder, folder_name, [r.run_id for r in batch], owner.token(),
            resources=chosen.resources(batch, max_parallel), evaluation=evaluation)
        records.write_pending(record)
        subs = chosen.submit(record, batch, results_dir)
        ledger.record_submissions(subs)
        chosen.release(subs)
        records.settle(record, [s.job_id for s in subs])
        out += subs
    return out

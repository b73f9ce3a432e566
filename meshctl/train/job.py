"""`run_training(spec, run_dir)`: one run, start to finish or resumed; the function jobs call.

Idempotent: a directory with final.json returns it; one with checkpoints/last.ckpt resumes from it; a new
one is laid out after every input check passed, so bad input leaves nothing behind. Under SLURM,
Lightning's SLURMEnvironment detects the ranks but never requeues (auto_requeue=False): submitit owns
requeue, and Lightning's silent `hpc_ckpt` resume never applies because the checkpoint path is explicit
(reference/orchestration.md §2.3-2.4).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meshctl.errors import BadInput, MeshctlError
from meshctl.specs.run import RunSpec, load_run_spec, parse_run_spec
from meshctl.train.rundir import RunDir, read_metrics

_NOISY_WARNINGS = (
    ".*does not have many workers.*",
    ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    ".*GPU available but not used.*",
    ".*The `srun` command is available on your system but is not used.*",
    # StepSampler resumes mid-epoch from the step count; Lightning cannot see that and warns
    ".*resuming from a checkpoint that ended before the epoch ended.*",
    # with train.loggers: Lightning's own per-step logging is unused (meshctl.train.loggers feeds them)
    ".*is smaller than the logging interval.*",
)


def as_run_spec(spec: RunSpec | dict[str, Any] | str | Path) -> RunSpec:
    if isinstance(spec, RunSpec):
        return spec
    if isinstance(spec, dict):
        return parse_run_spec(spec)
    return load_run_spec(spec)


def preflight(spec: RunSpec) -> None:
    """Every check on the data that can fail, before anything is written: BadInput names the field."""
    from meshctl.data.manifest import load_manifest
    from meshctl.train.datamodule import open_windows

    model = spec.model_spec()

    def manifest(field: str, path: str, split: str) -> Any:
        try:
            m = load_manifest(path)
        except BadInput as exc:
            raise BadInput(f"{field}: {exc}") from None
        if split not in m.splits:
            raise BadInput(f"{field}: split {split!r} is not in {path}; choose one of {sorted(m.splits)}")
        return m

    d, t = spec.data, spec.train
    train = manifest("data.path", d.path, d.split)
    mismatch = model.embedding_mismatch(train.tokenizer.vocab_size)
    if mismatch:
        raise BadInput(f"data.path: {mismatch}")
    for name, e in (d.eval_sets or {}).items():
        m = manifest(f"data.eval_sets.{name}.path", e.path, e.split)  # type: ignore[arg-type]
        if m.tokenizer.sha256 != train.tokenizer.sha256:
            raise BadInput(
                f"data.eval_sets.{name}: {e.path} was tokenized with another tokenizer than data.path; "
                "prepare it with the training data's tokenizer.json"
            )
    try:
        windows = open_windows(d.path, d.split, d.seq_len, d.mode)  # type: ignore[arg-type]
        for name, e in (d.eval_sets or {}).items():
            open_windows(e.path, e.split, d.seq_len, d.mode)  # type: ignore[arg-type]
    except BadInput as exc:
        raise BadInput(f"data: {exc}") from None
    if len(windows) < t.global_batch:  # type: ignore[operator]
        raise BadInput(
            f"data: {len(windows)} windows of {d.seq_len} tokens cannot fill one global batch of {t.global_batch}; "
            "use more data, a shorter data.seq_len or a smaller train.global_batch"
        )


def prepare_run(spec: RunSpec | dict[str, Any] | str | Path, run_dir: str | Path) -> tuple[RunSpec, RunDir]:
    """Resolve the spec and check it against the run directory and the data; writes nothing."""
    resolved = as_run_spec(spec).resolved()
    rd = RunDir(run_dir)
    rd.check_spec(resolved)
    if rd.read_final() is None:
        preflight(resolved)
    return resolved, rd


def run_training(spec: RunSpec | dict[str, Any] | str | Path, run_dir: str | Path) -> dict[str, Any]:
    """Train `spec` in `run_dir` to the end (resuming from its last checkpoint) and return the final
    metrics, also written to final.json. A completed directory returns its final.json untouched."""
    spec, rd = prepare_run(spec, run_dir)
    final = rd.read_final()
    if final is not None:
        return final
    rd.claim(spec)
    progress = sys.stderr.isatty()
    with _logging(rd, quiet=not progress) as log:
        return _fit(spec, rd, log, progress)


def _fit(spec: RunSpec, rd: RunDir, log: logging.Logger, progress: bool) -> dict[str, Any]:
    import lightning as L
    import torch
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from meshctl.train.allocator import keep_freed_memory
    from meshctl.train.callbacks import LastCheckpoint, MetricsWriter, StepProgressBar
    from meshctl.train.datamodule import LMDataModule
    from meshctl.train.module import LMModule
    from meshctl.train.sharding import lightning_strategy

    t = spec.train
    if not torch.cuda.is_available() and keep_freed_memory():
        log.debug("CPU training: glibc malloc keeps freed memory (no per-step page faults)")
    checkpoint = LastCheckpoint(spec, rd, log)
    loggers, feed = _trackers(spec, rd, checkpoint)
    callbacks: list[Any] = [MetricsWriter(spec, rd, log, feed.add if feed else None), checkpoint]
    if feed is not None:
        callbacks.append(feed)  # after LastCheckpoint: it sends what the checkpoint just covered
    if progress:
        callbacks.append(StepProgressBar())
    trainer = L.Trainer(
        accelerator="auto",
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=lightning_strategy(t.strategy, t.world_size),
        precision="32-true" if t.precision == "32" else t.precision,  # type: ignore[arg-type]
        max_steps=t.max_steps,  # type: ignore[arg-type]
        max_epochs=-1,
        accumulate_grad_batches=t.accumulate,
        limit_val_batches=0,  # validation is the MetricsWriter's, on step counts
        num_sanity_val_steps=0,
        logger=loggers or False,
        enable_checkpointing=False,  # LastCheckpoint writes atomically
        enable_progress_bar=progress,
        enable_model_summary=False,  # its FLOPs line reads 0 here; final.json has counts and FLOPs
        use_distributed_sampler=False,  # StepSampler shards by rank itself
        deterministic=t.deterministic,
        plugins=[SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None,
        default_root_dir=rd.logs,
        callbacks=callbacks,
    )
    if not trainer.is_global_zero:
        log.setLevel(logging.WARNING)  # one rank tells the story
    module = LMModule(spec)
    datamodule = LMDataModule(spec)
    ckpt = rd.last_ckpt if rd.last_ckpt.exists() else None
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    if trainer.global_step < t.max_steps:  # type: ignore[operator]
        raise MeshctlError(f"training stopped at step {trainer.global_step} of {t.max_steps}; run it again to resume")
    trainer.strategy.barrier("meshctl.final")
    final = final_metrics(spec, rd)
    if trainer.is_global_zero:
        rd.write_final(final)
        log.info("finished: %s", rd.final_path)
    return final


def _trackers(spec: RunSpec, rd: RunDir, checkpoint: Any) -> tuple[list[Any], Any]:
    """The loggers of `train.loggers` and the callback that feeds them (none without loggers)."""
    if not spec.train.loggers:
        return [], None
    from meshctl.train.loggers import TrackerFeed, build_loggers

    loggers = build_loggers(spec, rd)
    return loggers, TrackerFeed(spec, rd, loggers, checkpoint)


def final_metrics(spec: RunSpec, rd: RunDir) -> dict[str, Any]:
    """The completion record: final validation per eval set, the primary one (`validation` if present)
    as val_loss/perplexity, median throughput, parameter counts and training FLOPs."""
    from meshctl.models import count_params, flops_per_token

    records = read_metrics(rd.path)
    last = records[-1] if records else {}
    if last.get("step") != spec.train.max_steps or "val" not in last:
        raise MeshctlError(f"{rd.metrics_path}: no final validation record at step {spec.train.max_steps}")
    val = last["val"]
    primary = "validation" if "validation" in val else next(iter(val))
    model = spec.model_spec()
    fpt = flops_per_token(model, spec.data.seq_len, "palm")

    def median(key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "step": last["step"],
        "tokens": last["tokens"],
        "train_loss": last.get("train_loss"),
        "eval_set": primary,
        "val_loss": val[primary]["loss"],
        "perplexity": val[primary]["perplexity"],
        "val": val,
        "tokens_per_s": median("tokens_per_s"),
        "mfu": median("mfu"),
        "params": count_params(model).as_dict(),
        "flop_formula": "palm",
        "flops_per_token": fpt,
        "train_flops": fpt * last["tokens"],
        "spec_hash": spec.short_hash(),
        "completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def _logging(rd: RunDir, quiet: bool) -> Iterator[logging.Logger]:
    """logs/train.log always; the same lines on stderr when not in a terminal (jobs); Lightning's banner
    and known-noisy warnings muted when quiet."""
    log = logging.getLogger("meshctl.train")
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(rd.logs / "train.log", encoding="utf-8")]
    if quiet:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    if quiet:
        lightning_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in _NOISY_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield log
    finally:
        lightning_log.setLevel(level)
        for h in handlers:
            log.removeHandler(h)
            h.close()

"""Experiment trackers from `train.loggers`: Lightning's TensorBoard, W&B and CSV loggers, each writing under
the run directory (`tensorboard/`, `wandb/`, `csv/metrics.csv`) and fed the scalars of metrics.jsonl, which
stays the source of truth. The resolved spec is the run's config (hparams), the run id its W&B name, the
sweep that planned it (`RunSpec.sweep`) its W&B group; every attempt of a run (resumed, requeued) logs to
the W&B run whose id the run directory keeps (`wandb_id`, resume="allow") and to the same TensorBoard
directory. Only rank zero logs.

A step reaches the trackers once a checkpoint covers it. A run killed after its checkpoint at step c
re-trains steps c+1.. when it resumes, and metrics.jsonl gets those records twice (its readers merge by
step); a tracker told them twice would draw them twice (TensorBoard, CSV) or keep the killed attempt's
(W&B drops steps at or below its last). Held back until the next checkpoint, no tracker sees a step
that will be trained again: one curve per run, each step once, curves lagging the run by up to
`ckpt_every` steps. A resumed attempt sends again, from metrics.jsonl, the covered steps a tracker may
have lost (`_replay_from`).

W&B follows its environment: `WANDB_MODE=offline` logs without network or API key (one
`wandb/offline-run-*` folder per attempt, all of the same id, the last one holding the whole curve),
`WANDB_PROJECT` (default `meshctl`), `WANDB_ENTITY`.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterator
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from meshctl.specs.run import RunSpec
from meshctl.train.callbacks import LastCheckpoint, _StepBoundary
from meshctl.train.rundir import RunDir, read_metrics


def build_loggers(spec: RunSpec, rd: RunDir) -> list[Logger]:
    """One Lightning logger per name in `spec.train.loggers`, in that order."""
    out: list[Logger] = []
    for name in spec.train.loggers:
        if name == "tensorboard":
            out.append(TensorBoardLogger(rd.path, name="tensorboard", version="", default_hp_metric=False))
        elif name == "csv":
            out.append(CSVLogger(rd.path, name="csv", version=""))
        elif name == "wandb":
            out.append(WandbLogger(
                name=spec.short_hash(), id=rd.wandb_id(secrets.token_hex(6)), resume="allow",
                group=spec.sweep, project=os.environ.get("WANDB_PROJECT", "meshctl"), save_dir=str(rd.path),
            ))
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as tracker scalars: its numbers under their own keys, `val.<set>.<key>` as
    `val/<set>/<key>`; the step is the x-axis, nulls are left out."""
    return {key: float(value) for key, value in _leaves(record)
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """The spec as TensorBoard hparams: `a/b` keys, anything but a plain value as its str."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in _leaves(config)}


def _leaves(document: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """A nested dict's non-dict values, keyed by their path joined with `/`."""
    for key, value in document.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            yield from _leaves(value, name)
        else:
            yield name, value


class TrackerFeed(_StepBoundary):
    """Sends MetricsWriter's records to the loggers once `checkpoint` has saved a step at or after theirs.
    Listed after LastCheckpoint, so the checkpoint of a step is on disk when this runs for that step."""

    def __init__(self, spec: RunSpec, rd: RunDir, loggers: list[Logger], checkpoint: LastCheckpoint) -> None:
        super().__init__()
        self.spec, self.rd, self.loggers, self.checkpoint = spec, rd, loggers, checkpoint
        self.pending: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.pending.append(record)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # before Lightning's first logger.save(): the hparams.yaml files are written once, then kept
        if not trainer.is_global_zero:
            return
        config = self.spec.model_dump(mode="json")
        for logger in self.loggers:
            logger.log_hyperparams(config)
            if isinstance(logger, TensorBoardLogger):
                self._tensorboard_hparams(logger, config)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        resumed_at = trainer.global_step
        if not trainer.is_global_zero or not resumed_at:
            return
        covered = [r for r in read_metrics(self.rd.path) if r["step"] <= resumed_at]
        for logger in self.loggers:
            first = _replay_from(logger)
            if first is not None:
                for record in covered:
                    if record["step"] >= first:
                        _send(logger, record)
                logger.save()

    def _tensorboard_hparams(self, logger: TensorBoardLogger, config: dict[str, Any]) -> None:
        """The HPARAMS tab: the spec against each eval set's loss curve (Lightning's own call would log
        a placeholder value at step 0 on those curves)."""
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"val/{name}/loss": math.nan for name in self.spec.data.eval_sets or {}}
        writer = logger.experiment._get_file_writer()
        for summary in hparams(_flat_config(config), metrics):
            writer.add_summary(summary)

    def on_step(self, trainer: L.Trainer, pl_module: Any, step: int) -> None:
        covered = self.checkpoint.saved_step
        ready = [r for r in self.pending if r["step"] <= covered]
        if not ready or not trainer.is_global_zero:
            return
        self.pending = [r for r in self.pending if r["step"] > covered]
        for logger in self.loggers:
            for record in ready:
                _send(logger, record)
            logger.save()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for logger in self.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                # the next run trained in this process (a local lane) starts its own W&B run
                logger.experiment.finish(exit_code=0 if trainer.global_step >= self.spec.train.max_steps else 1)


def _send(logger: Logger, record: dict[str, Any]) -> None:
    step = record["step"]
    if isinstance(logger, WandbLogger):
        # W&B's own step is the training step, so a resumed attempt continues its x-axis (Lightning's
        # log_metrics counts from 0 again in each offline attempt); commit: the row is complete
        logger.experiment.log({**scalars(record), "trainer/global_step": step}, step=step, commit=True)
    else:
        logger.log_metrics(scalars(record), step)


def _replay_from(logger: Logger) -> int | None:
    """The first covered step a resumed attempt sends `logger` again from metrics.jsonl, or None.
    TensorBoard: none, its event files keep every flushed step. CSV: all, Lightning's CSVLogger empties
    metrics.csv when it opens. W&B: those above the run's last step, since what W&B's service buffered
    (its log is written every 15 s) dies with a killed trainer; online, W&B resumes at the server's last
    step + 1, and offline each attempt is a log of its own (`wandb/offline-run-*`), whose last one then
    holds the whole curve."""
    if isinstance(logger, CSVLogger):
        return 0
    if isinstance(logger, WandbLogger):
        return logger.experiment.step
    return None

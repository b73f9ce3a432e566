"""Callbacks that keep the run directory: metrics.jsonl records with validation, and atomic last.ckpt.

Throughput is tokens per second of training (validation and checkpoint time excluded); MFU is
throughput x FLOPs/token (the counting module's "palm" formula: matmuls incl. LM head and attention)
over the peak dense FLOP/s of the devices (`meshctl.train.hardware`, from NVIDIA's datasheets). MFU is
null on CPU and on GPUs not in the table, never a guess.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar

from meshctl.models import flops_per_token
from meshctl.specs.run import RunSpec
from meshctl.train.hardware import PEAK_FLOPS, chip_of
from meshctl.train.rundir import RunDir


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak dense FLOP/s of one device at the run's precision; None on CPU or an unknown GPU."""
    if device.type != "cuda":
        return None
    chip = chip_of(torch.cuda.get_device_name(device))
    if chip is None:
        return None
    if precision == "bf16-mixed":
        kind = "bf16"
    else:  # fp32 matmuls run as TF32 only if allowed (torch's default float32 precision is "highest")
        kind = "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return PEAK_FLOPS[chip][kind]


def format_record(record: dict[str, Any], max_steps: int) -> str:
    """One structured log line: `step=100/489 tokens=204800 train_loss=5.1234 ... val.validation.loss=5.2`."""
    parts = [f"step={record['step']}/{max_steps}", f"tokens={record['tokens']}"]
    for key, fmt in (("train_loss", "{:.4f}"), ("lr", "{:.3e}"), ("grad_norm", "{:.3f}"),
                     ("tokens_per_s", "{:.0f}"), ("mfu", "{:.3f}")):
        if record.get(key) is not None:
            parts.append(f"{key}={fmt.format(record[key])}")
    for name, v in record.get("val", {}).items():
        parts.append(f"val.{name}.loss={v['loss']:.4f} val.{name}.ppl={v['perplexity']:.2f}")
    return " ".join(parts)


class _StepBoundary(Callback):
    """Runs `on_step` once per optimizer step (not per accumulated micro-batch)."""

    def __init__(self) -> None:
        self.seen_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step != self.seen_step:
            self.seen_step = trainer.global_step
            self.on_step(trainer, pl_module, trainer.global_step)

    def on_step(self, trainer: L.Trainer, pl_module: Any, step: int) -> None:
        raise NotImplementedError


class MetricsWriter(_StepBoundary):
    """Appends a record every `log_every` steps, with validation every `val_every` steps and at the end.

    It runs before LastCheckpoint at each step, so a checkpoint's step always has its record: a run
    resumed from its final checkpoint finds its final validation already in metrics.jsonl."""

    def __init__(self, spec: RunSpec, run_dir: RunDir, log: logging.Logger,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__()
        self.spec, self.run_dir, self.textlog = spec, run_dir, log
        self.on_record = on_record  # rank zero's records, after metrics.jsonl has them (the trackers' feed)
        self.flops_per_token = flops_per_token(spec.model_spec(), spec.data.seq_len, "palm")
        self.peak: float | None = None
        self.eval_loaders: dict[str, Any] = {}
        self._window_start: float | None = None
        self._window_steps = 0
        self._started = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.peak = peak_flops(trainer.strategy.root_device, self.spec.train.precision)  # type: ignore[arg-type]
        self.eval_loaders = trainer.datamodule.eval_dataloaders()  # type: ignore[attr-defined]
        self.textlog.info("training from step %d to %d (%s)", trainer.global_step, self.spec.train.max_steps,
                      "resumed" if trainer.global_step else "new run")

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()

    def on_step(self, trainer: L.Trainer, pl_module: Any, step: int) -> None:
        t = self.spec.train
        self._window_steps += 1
        last = step >= t.max_steps  # type: ignore[operator]
        validate = step % t.val_every == 0 or last  # type: ignore[operator]
        if not (step % t.log_every == 0 or validate):  # type: ignore[operator]
            return
        record = self._step_record(step)
        record.update(self._train_record(trainer, pl_module))
        if validate:
            record["val"] = pl_module.evaluate(self.eval_loaders)
        self._emit(trainer, record)
        self._window_start, self._window_steps = None, 0

    def _step_record(self, step: int) -> dict[str, Any]:
        return {"step": step, "tokens": step * self.spec.tokens_per_step}

    def _train_record(self, trainer: L.Trainer, pl_module: Any) -> dict[str, Any]:
        loss = pl_module.take_train_loss()
        now = time.perf_counter()
        elapsed = now - self._window_start if self._window_start is not None else math.nan
        tokens_per_s = self._window_steps * self.spec.tokens_per_step / elapsed if elapsed > 0 else None
        mfu = None
        if tokens_per_s is not None and self.peak is not None:
            mfu = tokens_per_s * self.flops_per_token / (self.peak * trainer.world_size)
        grad_norm = pl_module.last_grad_norm
        return {
            "train_loss": loss,
            "lr": pl_module.last_lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "elapsed_s": now - self._started,
        }

    def _emit(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        if trainer.is_global_zero:
            self.run_dir.append_metrics(record)
            self.textlog.info(format_record(record, self.spec.train.max_steps))  # type: ignore[arg-type]
            if self.on_record is not None:
                self.on_record(record)


class LastCheckpoint(_StepBoundary):
    """`checkpoints/last.ckpt` every `ckpt_every` steps and at the end, written to a temporary file and
    renamed, so a kill leaves the previous checkpoint intact. All ranks call it (Lightning's barrier)."""

    def __init__(self, spec: RunSpec, run_dir: RunDir, log: logging.Logger) -> None:
        super().__init__()
        self.spec, self.run_dir, self.textlog = spec, run_dir, log
        self.saved_step = -1

    def on_step(self, trainer: L.Trainer, pl_module: Any, step: int) -> None:
        if step % self.spec.train.ckpt_every == 0 or step >= self.spec.train.max_steps:  # type: ignore[operator]
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        final = self.run_dir.last_ckpt
        tmp = final.with_name(f".{final.name}.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        trainer.strategy.barrier("meshctl.last_ckpt")
        self.saved_step = trainer.global_step
        self.textlog.info("checkpoint step=%d path=%s", trainer.global_step, final)


class StepProgressBar(RichProgressBar):
    """Rich progress over the whole run's micro-batches, drawn on stderr (stdout stays for --format json).
    Lightning's default bar counts epochs, which mean nothing here (one epoch spans the run)."""

    def __init__(self) -> None:
        super().__init__(console_kwargs={"stderr": True})

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps * self.trainer.accumulate_grad_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return "training"

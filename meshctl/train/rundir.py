"""The run directory contract (after lingua's `stool` dumps), read by the orchestrator, `status` and reports:

    spec.json              the resolved RunSpec; a directory never changes spec
    metrics.jsonl          append-only, one JSON object per line (schema below)
    checkpoints/last.ckpt  every `ckpt_every` steps and at the end, replaced atomically
    final.json             written last and atomically: its presence means the run completed
    logs/                  train.log (structured lines) and anything the executor adds
    tensorboard/ wandb/ csv/   the trackers named in train.loggers (meshctl.train.loggers)
    wandb_id               the W&B run id every attempt of this run (resume, requeue) logs to

A metrics line has `step` and `tokens` and some of: `train_loss` (mean since the previous line),
`lr`, `grad_norm`, `tokens_per_s`, `mfu` (null on CPU or an unknown GPU), `elapsed_s`, and
`val: {name: {loss, perplexity, tokens}}` on validation steps. A resumed run re-logs the steps since its
last checkpoint, so a step can appear more than once: readers merge by step, later lines winning.
No torch here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from meshctl.errors import BadInput
from meshctl.layout import CHECKPOINTS, FINAL, LAST_CKPT, LOGS, METRICS, SPEC, WANDB_ID, metric_records


def write_json_atomic(path: Path, document: Any) -> None:
    """Readers see the old file, none, or the new one, never a part (same-directory rename, fsynced)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(document, indent=2, sort_keys=True, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._append_checked = False

    @property
    def spec_path(self) -> Path:
        return self.path / SPEC

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def final_path(self) -> Path:
        return self.path / FINAL

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_ckpt(self) -> Path:
        return self.path / CHECKPOINTS / LAST_CKPT

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    def wandb_id(self, new_id: str) -> str:
        """The W&B run id of this directory: `new_id` if none is kept yet, else the kept one. Written
        complete and linked into place (link fails if the file exists), so ranks or a racing requeue that
        call this at once all get the same id."""
        path = self.path / WANDB_ID
        if not path.exists():
            tmp = path.with_name(f".{WANDB_ID}.tmp-{new_id}")
            tmp.write_text(new_id + "\n", encoding="utf-8")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text(encoding="utf-8").strip()

    def check_spec(self, spec: Any) -> bool:
        """True if the directory already holds this (resolved) spec, False if it holds none; BadInput if it
        holds a different one. Writes nothing. Specs are compared by run identity
        (`meshctl.specs.hashing.identity`: where the data directory lives does not count, its name does),
        so a study moved to another machine resumes in place; spec.json keeps what it was written with."""
        if not self.spec_path.exists():
            return False
        from meshctl.specs.hashing import identity
        from meshctl.specs.run import RunSpec

        try:
            held = RunSpec.model_validate_json(self.spec_path.read_text()).model_dump(mode="json")
        except Exception:
            raise BadInput(f"{self.spec_path}: unreadable spec.json; use another --run-dir") from None
        if identity(held) != identity(spec.model_dump(mode="json")):
            raise BadInput(
                f"{self.path} holds a different run spec ({SPEC} differs); use another --run-dir or remove that directory"
            )
        return True

    def claim(self, spec: Any) -> None:
        """Create the directory layout and write spec.json (or check the one there)."""
        if self.check_spec(spec):
            return
        for d in (self.path, self.checkpoints, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.spec_path, spec.model_dump(mode="json"))

    def append_metrics(self, record: dict[str, Any]) -> None:
        if not self._append_checked:
            # a process killed mid-write can leave a partial last line: end it so the next one stays whole
            if self.metrics_path.exists() and self.metrics_path.stat().st_size:
                with open(self.metrics_path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    partial = f.read(1) != b"\n"
                if partial:
                    with open(self.metrics_path, "a", encoding="utf-8") as f:
                        f.write("\n")
            self._append_checked = True
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_final(self, final: dict[str, Any]) -> None:
        write_json_atomic(self.final_path, final)

    def read_final(self) -> dict[str, Any] | None:
        return read_final(self.path)


def read_final(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """final.json of a completed run, or None."""
    path = Path(run_dir) / FINAL
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """metrics.jsonl as one record per step, in step order: lines of the same step are merged key by key,
    later lines winning (a requeued or resumed run re-logs steps). Unparseable lines (a write cut by a
    kill) are skipped."""
    path = Path(run_dir) / METRICS
    by_step: dict[int, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for record in metric_records(lines):
        merged = by_step.setdefault(record["step"], {})
        for key, value in record.items():
            if key == "val" and isinstance(value, dict):
                merged.setdefault("val", {}).update(value)
            else:
                merged[key] = value
    return [by_step[s] for s in sorted(by_step)]


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf

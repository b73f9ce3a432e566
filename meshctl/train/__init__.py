"""Training: LightningModule, DataModule, callbacks, the run-directory contract and the job entry point.

`run_training(spec, run_dir)` is the single entry point (the orchestrator calls it inside jobs);
`read_metrics(run_dir)` reads a run's metrics back. Torch and Lightning load on first use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "run_training":
        from meshctl.train.job import run_training

        return run_training
    if name in ("read_metrics", "read_final", "RunDir"):
        from meshctl.train import rundir

        return getattr(rundir, name)
    raise AttributeError(name)


__all__ = ["RunDir", "read_final", "read_metrics", "run_training"]

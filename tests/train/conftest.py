"""Fixtures for the training tests: 2 threads, and small run specs over the real `prepared_demo` text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _two_threads():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_spec(prepared_demo: Path) -> Callable[..., dict[str, Any]]:
    """`small_spec(model="tiny-64", **train)`: a run of a few dozen 512-token steps on the demo text."""

    def make(model: Any = "tiny-64", **train: Any) -> dict[str, Any]:
        return {
            "model": model,
            "data": {"path": str(prepared_demo), "seq_len": 32},
            "train": {
                "max_steps": 24, "global_batch": 16, "micro_batch": 8, "lr": 3e-3, "warmup": 0.1,
                "log_every": 4, "val_every": 12, "val_batches": 2, "ckpt_every": 8, "deterministic": True,
                **train,
            },
            "seed": 0,
        }

    return make

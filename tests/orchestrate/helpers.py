"""Helpers shared by the orchestration tests: tiny sweep specs and the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml


def tiny_sweep(data: Path, name: str = "mini", **overrides: Any) -> dict[str, Any]:
    """Three tiny-64 runs (vanilla, base, mesh) of a few steps each on real text."""
    spec: dict[str, Any] = {
        "name": name,
        "data": {"path": str(data), "seq_len": 32},
        "train": {"global_batch": 4, "micro_batch": 4, "tokens": 640, "log_every": 1, "val_every": 5,
                  "val_batches": 2, "ckpt_every": 5, "precision": "32"},
        "seeds": [0],
        "executor": {"kind": "local", "max_parallel": 2, "resources": {"timeout_min": 10}},
        "groups": [{"name": "t64", "vanilla": "tiny-64", "train": {"lr": 3e-3},
                    "variants": [{"structure": "1+1R2+1", "recurrence": ["base", "mesh"]}]}],
    }
    spec.update(overrides)
    return spec


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def meshctl(*args: str, results: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if results is not None:
        env["MESHCTL_RESULTS"] = str(results)
    return subprocess.run([sys.executable, "-m", "meshctl", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def wait_for(predicate, timeout: float = 300, interval: float = 0.5) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")

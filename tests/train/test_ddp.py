"""DDP over 2 CPU processes (gloo) trains the same run as one process: each rank reads its slice of every
global batch, gradients average to the same step, and eval sums reduce to the same validation loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meshctl.train.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_on_two_processes_matches_one(small_spec, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    finals = {}
    for name, extra in (("one", {}), ("ddp", {"strategy": "ddp", "devices": 2})):
        spec_path = tmp_path / f"{name}.yaml"
        spec = small_spec("tiny-64-1+1R2+1-mesh", max_steps=12, global_batch=8, micro_batch=2, log_every=4,
                          val_every=6, val_batches=3, ckpt_every=6, **extra)
        spec_path.write_text(yaml.safe_dump(spec))
        out = subprocess.run(
            [sys.executable, "-m", "meshctl", "train", str(spec_path), "--run-dir", str(tmp_path / name),
             "--format", "json"], env=env, capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        finals[name] = json.loads(out.stdout)["final"]
    assert finals["ddp"]["val_loss"] == pytest.approx(finals["one"]["val_loss"], abs=1e-5)
    one, ddp = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "ddp")
    assert [r["step"] for r in ddp] == [r["step"] for r in one] == [4, 6, 8, 12]
    for a, b in zip(one, ddp):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    assert one[-1]["val"]["validation"]["tokens"] == ddp[-1]["val"]["validation"]["tokens"] == 3 * 2 * 32

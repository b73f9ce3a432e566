"""End to end on real text: tiny models learn; a run killed with SIGKILL resumes to the same result;
bad input is refused with one line and exit code 2, leaving the run directory as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from meshctl.cli.app import app
from meshctl.data.indexed import IndexedDataset
from meshctl.data.manifest import load_manifest
from meshctl.train.job import run_training
from meshctl.train.rundir import RunDir, read_final, read_metrics
from tests.train.helpers import assert_refused

ROOT = Path(__file__).resolve().parents[2]


def split_tokens(data: Path, split: str) -> np.ndarray:
    ds = IndexedDataset(load_manifest(data).prefix(data, split))
    return np.concatenate([ds[i] for i in range(len(ds))])


def unigram_baselines(data: Path) -> tuple[float, float]:
    """(entropy of the training text's unigram distribution, cross-entropy of that distribution (add-one
    smoothed) on the validation text), in nats per token: what a model that ignores context can reach."""
    vocab = load_manifest(data).tokenizer.vocab_size
    train, val = split_tokens(data, "train"), split_tokens(data, "validation")
    counts = np.bincount(train, minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    smoothed = (counts + 1) / (counts.sum() + vocab)
    return float(-(p * np.log(p)).sum()), float(-np.log(smoothed[val]).mean())


@pytest.mark.parametrize("model", ["tiny-64", "tiny-64-1+1R2+1-mesh"])
def test_tiny_model_learns_real_text(model, prepared_demo, small_spec, tmp_path):
    # 80 steps x 1,024 tokens: less than one epoch, so every training batch is unseen when its loss is
    # taken and the logged train loss is a held-out estimate on the training distribution.
    spec = small_spec(model, max_steps=80, global_batch=16, micro_batch=16, lr=5e-3, val_every=80, val_batches=4,
                      ckpt_every=80, log_every=20)
    spec["data"]["seq_len"] = 64
    final = run_training(spec, tmp_path / "run")
    train_entropy, val_unigram = unigram_baselines(prepared_demo)
    windows_seen = 80 * 16
    assert windows_seen * 64 < len(split_tokens(prepared_demo, "train"))
    assert final["val"]["validation"]["tokens"] == (len(split_tokens(prepared_demo, "validation")) - 1) // 64 * 64
    assert final["val_loss"] < val_unigram - 0.3, (final["val_loss"], val_unigram)
    assert final["train_loss"] < train_entropy - 0.5, (final["train_loss"], train_entropy)
    assert final["perplexity"] == pytest.approx(np.exp(final["val_loss"]))
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(20, 81, 20))
    assert records[0]["train_loss"] > records[-1]["train_loss"]
    assert all(r["mfu"] is None and r["tokens_per_s"] > 0 for r in records)  # no MFU invented on CPU


def _train_cli(spec_path: Path, run_dir: Path, new_session: bool = False) -> subprocess.Popen:
    """`meshctl train --format json` in a subprocess; `new_session` so that os.killpg reaches its ranks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "meshctl", "train", str(spec_path), "--run-dir", str(run_dir), "--format", "json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=new_session,
    )


def _wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and any(json.loads(line).get("step") == step for line in metrics.read_text().splitlines()
                                    if line.endswith("}")):
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    raise TimeoutError(f"step {step} never logged")


def test_sigkilled_run_resumes_to_the_same_result(small_spec, tmp_path):
    # accumulation 2 x 4 sequences of 64, checkpoints every 8 steps, killed at step 12 (between checkpoints)
    spec = small_spec(max_steps=60, micro_batch=4, global_batch=8, ckpt_every=8, log_every=2, val_every=20)
    spec["data"]["seq_len"] = 64
    spec_path = tmp_path / "run.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ref_proc = _train_cli(spec_path, reference)
    proc = _train_cli(spec_path, killed)
    _wait_for_step(proc, killed / "metrics.jsonl", 12)
    proc.send_signal(signal.SIGSTOP)  # freeze it at once, then kill: no chance to reach the step-16 checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "checkpoints" / "last.ckpt").exists() and not (killed / "final.json").exists()
    ref_out, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err[-2000:]

    resumed = _train_cli(spec_path, killed)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert "resuming from" in err

    final, ref_final = json.loads(out)["final"], json.loads(ref_out)["final"]
    assert final == read_final(killed)
    assert abs(final["val_loss"] - ref_final["val_loss"]) < 1e-5
    raw_steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()
                 if line.endswith("}")]
    assert len(raw_steps) > len(set(raw_steps))  # steps 10 and 12 were logged twice...
    records, ref_records = read_metrics(killed), read_metrics(reference)
    assert [r["step"] for r in records] == list(range(2, 61, 2))  # ...and read back once each
    for r, ref in zip(records, ref_records):
        assert r["train_loss"] == pytest.approx(ref["train_loss"], abs=1e-6), r["step"]
        assert r["lr"] == ref["lr"]

    again = _train_cli(spec_path, killed)  # a completed run returns its final.json, training nothing
    out, _ = again.communicate(timeout=120)
    assert json.loads(out)["final"] == final


def _snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file()}


def _cli(args: list[str]):
    return CliRunner().invoke(app, args)


def test_bad_inputs_are_refused_with_one_line(prepared_demo, small_spec, tmp_path):
    def write(name: str, spec: dict) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    run_dir = tmp_path / "run"
    args = lambda spec: ["train", str(spec), "--run-dir", str(run_dir)]  # noqa: E731

    vocab = load_manifest(prepared_demo).tokenizer.vocab_size
    too_small = write("vocab.yaml", small_spec({"preset": "tiny-64", "vocab_size": vocab // 2}))
    assert_refused(_cli(args(too_small)), f"{vocab:,} token ids exceed the model's embedding of {vocab // 2:,} rows",
                   f"model.vocab_size >= {vocab}", "--vocab-size")

    missing = small_spec()
    missing["data"]["path"] = str(tmp_path / "no-such-data")
    assert_refused(_cli(args(write("missing.yaml", missing))), "data.path", "meshctl data prepare")

    assert_refused(_cli(args(write("batch.yaml", small_spec(global_batch=12, micro_batch=8)))), "train.global_batch", "12")
    bad_yaml = tmp_path / "syntax.yaml"
    bad_yaml.write_text("model: tiny-64\ntrain: {max_steps: 3\n")
    assert_refused(_cli(args(bad_yaml)), "line")
    assert not run_dir.exists()  # nothing was created by any refusal

    # a run directory that holds another spec is left exactly as it was
    from meshctl.specs.run import parse_run_spec

    RunDir(run_dir).claim(parse_run_spec(small_spec(lr=1e-3)).resolved())
    (run_dir / "metrics.jsonl").write_text('{"step": 4, "tokens": 2048}\n')
    before = _snapshot(run_dir)
    assert_refused(_cli(args(write("other.yaml", small_spec(lr=2e-3)))), "different run spec", str(run_dir))
    assert_refused(_cli(args(too_small)), "different run spec")
    assert _snapshot(run_dir) == before

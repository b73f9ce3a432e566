"""Trackers from `train.loggers`, read back with their own readers: TensorBoard's event accumulator and
event-file loader, W&B's transaction-log inspector (`wandb leet inspect --json`, offline runs) and the
CSV file of Lightning's CSVLogger; each holds metrics.jsonl's scalars, and a run killed with SIGKILL and
resumed stays one run on each, no step logged twice."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from meshctl.cli.app import app
from meshctl.specs.run import RunSpec
from meshctl.specs.sweep import expand, parse_sweep
from meshctl.train.job import run_training
from meshctl.train.loggers import scalars
from meshctl.train.rundir import read_metrics
from tests.orchestrate.helpers import tiny_sweep
from tests.train.helpers import assert_refused
from tests.train.test_training import _train_cli, _wait_for_step

WANDB_BIN = Path(sys.executable).with_name("wandb")


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch) -> dict[str, str]:
    """W&B without network or API key, its user-level files in the test's directory."""
    env = {"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
           "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # wandb.init in this process exports its service's address; restored after the test, and empty in
    # the trainers this test starts, so that each of them runs its own service as a job would
    monkeypatch.setenv("WANDB_SERVICE", "")
    return env


def expected_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as tag -> {step: value}, the curves every tracker must draw."""
    curves: dict[str, dict[int, float]] = {}
    for record in read_metrics(run_dir):
        for tag, value in scalars(record).items():
            curves.setdefault(tag, {})[record["step"]] = value
    return curves


def tensorboard_curves(log_dir: Path) -> tuple[dict[str, dict[int, float]], Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    curves = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        assert len({e.step for e in events}) == len(events), f"{tag}: a step drawn twice"
        curves[tag] = {e.step: e.value for e in events}
    return curves, acc


def tensorboard_writes(log_dir: Path) -> Counter:
    """(tag, step) -> how many times a scalar was written, over every event file of the directory."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    writes: Counter = Counter()
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            # the loader migrates simple values to the scalars plugin's tensors
            writes.update((v.tag, event.step) for v in event.summary.value
                          if v.metadata.plugin_data.plugin_name == "scalars")
    return writes


def wandb_records(offline_run: Path) -> list[dict[str, Any]]:
    out = subprocess.run([str(WANDB_BIN), "leet", "inspect", "--json", str(offline_run)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def wandb_attempts(run_dir: Path) -> list[tuple[dict[str, Any] | None, dict[int, dict[str, Any]]]]:
    """Each offline attempt's run record (None if nothing reached its log) and history rows by step,
    oldest first."""
    attempts = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        records = wandb_records(folder)
        run = next((r["run"] for r in records if r["type"] == "run"), None)
        history: dict[int, dict[str, Any]] = {}
        for r in records:
            if r["type"] == "history":
                step = int(r["history"]["step"]["num"])
                assert step not in history, f"{folder.name}: step {step} logged twice"
                history[step] = r["history"]["item"]
        attempts.append((run, history))
    return attempts


def csv_curves(run_dir: Path) -> tuple[list[int], dict[str, dict[int, float]]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(row["step"]) for row in rows]
    curves: dict[str, dict[int, float]] = {}
    for row, step in zip(rows, steps):
        for key, value in row.items():
            if key != "step" and value != "":
                curves.setdefault(key, {})[step] = float(value)
    return steps, curves


def assert_same_curves(got: dict[str, dict[int, float]], expected: dict[str, dict[int, float]], rel: float) -> None:
    assert set(got) == set(expected)
    for tag, curve in expected.items():
        assert sorted(got[tag]) == sorted(curve), tag
        assert got[tag] == pytest.approx(curve, rel=rel), tag


def test_trackers_hold_the_metrics_and_the_spec(small_spec, tmp_path, wandb_offline):
    spec = small_spec(max_steps=12, log_every=2, val_every=6, ckpt_every=4)
    spec["train"]["loggers"] = ["tensorboard", "wandb", "csv"]
    spec["sweep"] = "tracking-study"
    run = tmp_path / "run"
    run_training(spec, run)
    resolved = RunSpec.model_validate_json((run / "spec.json").read_text())
    expected = expected_scalars(run)
    assert sorted(expected["train_loss"]) == list(range(2, 13, 2))
    assert sorted(expected["val/validation/loss"]) == [6, 12]

    tb, acc = tensorboard_curves(run / "tensorboard")
    assert_same_curves(tb, expected, rel=1e-6)  # event files store float32
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model/n_embd"].number_value == 64
    assert start.hparams["train/lr"].number_value == pytest.approx(3e-3)
    assert yaml.safe_load((run / "tensorboard" / "hparams.yaml").read_text()) == resolved.model_dump(mode="json")

    steps, table = csv_curves(run)
    assert steps == list(range(2, 13, 2))
    assert_same_curves(table, expected, rel=1e-12)

    ((wb_run, history),) = wandb_attempts(run)
    assert wb_run["run_id"] == (run / "wandb_id").read_text().strip()
    assert wb_run["display_name"] == resolved.short_hash() and wb_run["run_group"] == "tracking-study"
    assert wb_run["project"] == "meshctl"
    wb = {tag: {s: row[tag] for s, row in history.items() if tag in row} for tag in expected}
    assert_same_curves(wb, expected, rel=1e-12)
    assert all(row["trainer/global_step"] == s for s, row in history.items())
    config = {}
    for record in wandb_records(next((run / "wandb").glob("offline-run-*"))):
        if record["type"] == "config":
            config.update(record["config"]["update"])
    assert config["model"] == resolved.model_dump(mode="json")["model"] and config["seed"] == 0


@pytest.mark.slow
def test_killed_run_resumes_as_one_tracked_run(small_spec, tmp_path, wandb_offline):
    # accumulation 2 x 4 sequences of 64, checkpoints every 8 steps, killed once step 12 is logged
    spec = small_spec(max_steps=24, micro_batch=4, global_batch=8, ckpt_every=8, log_every=2, val_every=12)
    spec["data"]["seq_len"] = 64
    spec["train"]["loggers"] = ["tensorboard", "wandb", "csv"]
    spec["sweep"] = "tracking-study"
    spec_path = tmp_path / "run.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run = tmp_path / "run"
    proc = _train_cli(spec_path, run)
    _wait_for_step(proc, run / "metrics.jsonl", 12)
    proc.send_signal(signal.SIGSTOP)  # frozen at once, then killed: the step-16 checkpoint is never reached
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run / "final.json").exists()
    import torch

    covered = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    killed_at = max(read_metrics(run)[-1]["step"], 12)
    assert covered < killed_at  # steps covered+1.. will be trained (and logged to metrics.jsonl) again
    wandb_id = (run / "wandb_id").read_text().strip()

    resumed = _train_cli(spec_path, run)  # while the killed attempt's W&B service still writes its log
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert "resuming from" in err
    assert json.loads(out)["final"]["step"] == 24  # stdout is still one JSON document
    raw_steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                 if line.endswith("}")]
    assert [s for s, n in Counter(raw_steps).items() if n > 1] == list(range(covered + 2, killed_at + 1, 2))
    expected = expected_scalars(run)
    steps = list(range(2, 25, 2))
    assert sorted(expected["train_loss"]) == steps

    attempts = wandb_attempts(run)
    assert (run / "wandb_id").read_text().strip() == wandb_id
    # the killed attempt's log holds at most what its checkpoint covered (W&B's service, killed with
    # it, loses what it had not written yet, here often all of it); the resumed one holds the whole
    # curve, each step once, under the same run id
    assert len(attempts) == 2
    (killed_run, killed_history), (run_record, history) = attempts
    assert killed_run is None or killed_run["run_id"] == wandb_id
    assert set(killed_history) <= set(range(2, covered + 1, 2))
    assert run_record["run_id"] == wandb_id and run_record["run_group"] == "tracking-study"
    assert run_record["resume"] is True
    assert list(history) == steps
    wb = {tag: {s: row[tag] for s, row in history.items() if tag in row} for tag in expected}
    assert_same_curves(wb, expected, rel=1e-12)

    writes = tensorboard_writes(run / "tensorboard")
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert {step for (tag, step) in writes if tag == "train_loss"} == set(steps)
    assert max(writes.values()) == 1  # no step written twice, in either attempt's file
    tb, _ = tensorboard_curves(run / "tensorboard")
    assert_same_curves(tb, expected, rel=1e-6)

    csv_steps, table = csv_curves(run)
    assert csv_steps == steps
    assert_same_curves(table, expected, rel=1e-12)


def test_a_missing_tracker_package_is_refused_with_the_extra(small_spec, tmp_path, monkeypatch):
    spec = small_spec()
    spec["train"]["loggers"] = ["csv", "wandb"]
    spec_path = tmp_path / "run.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without the extra finds
    result = CliRunner().invoke(app, ["train", str(spec_path), "--run-dir", str(tmp_path / "run")])
    assert_refused(result, "train.loggers", "wandb", "pip install 'meshctl[tracking]'")
    assert not (tmp_path / "run").exists()

    spec["train"]["loggers"] = ["csv", "csv"]
    spec_path.write_text(yaml.safe_dump(spec))
    assert_refused(CliRunner().invoke(app, ["train", str(spec_path), "--run-dir", str(tmp_path / "run")]),
                   "train.loggers", "csv listed more than once")
    spec["train"]["loggers"] = ["mlflow"]
    spec_path.write_text(yaml.safe_dump(spec))
    assert_refused(CliRunner().invoke(app, ["train", str(spec_path), "--run-dir", str(tmp_path / "run")]),
                   "train.loggers", "tensorboard")


def test_wandb_without_a_key_or_offline_mode_is_refused_before_anything_is_written(small_spec, tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    spec = small_spec()
    spec["train"]["loggers"] = ["wandb"]
    spec_path = tmp_path / "run.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run = ["train", str(spec_path), "--run-dir", str(tmp_path / "run")]
    assert_refused(CliRunner().invoke(app, run), "train.loggers", "wandb login", "WANDB_MODE=offline")
    assert not (tmp_path / "run").exists()
    # what wandb itself would accept: a key in the .netrc `wandb login` writes, or offline mode
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    assert RunSpec.model_validate(spec).resolved().train.loggers == ("wandb",)
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert RunSpec.model_validate(spec).resolved().train.loggers == ("wandb",)


def test_sweep_names_the_group_and_loggers_keep_run_ids(prepared_demo, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # wandb needs a key or offline mode (refused otherwise)
    plain = expand(parse_sweep(tiny_sweep(prepared_demo, name="plain")))
    swept = tiny_sweep(prepared_demo, name="tracked")
    swept["train"]["loggers"] = ["tensorboard", "wandb"]
    tracked = expand(parse_sweep(swept))
    assert [p.run_id for p in tracked] == [p.run_id for p in plain]  # watching a run does not change it
    assert {p.spec.sweep for p in tracked} == {"tracked"}
    assert all(p.spec.train.loggers == ("tensorboard", "wandb") for p in tracked)
    assert all(p.spec.short_hash() == p.run_id for p in tracked)


@pytest.mark.slow
def test_only_rank_zero_logs_under_ddp(small_spec, tmp_path, wandb_offline):
    spec = small_spec(max_steps=8, global_batch=8, micro_batch=2, log_every=2, val_every=4, ckpt_every=4,
                      strategy="ddp", devices=2)
    spec["train"]["loggers"] = ["tensorboard", "wandb", "csv"]
    spec_path = tmp_path / "ddp.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run = tmp_path / "ddp"
    out, err = _train_cli(spec_path, run).communicate(timeout=300)
    assert json.loads(out)["final"]["step"] == 8, err[-2000:]
    expected = expected_scalars(run)
    assert sorted(expected["train_loss"]) == [2, 4, 6, 8]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert max(tensorboard_writes(run / "tensorboard").values()) == 1
    ((_, history),) = wandb_attempts(run)  # one W&B run, from one rank
    assert list(history) == [2, 4, 6, 8]
    steps, table = csv_curves(run)
    assert steps == [2, 4, 6, 8]
    assert_same_curves(table, expected, rel=1e-12)

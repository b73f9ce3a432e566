"""The results layout: paths, the "no ledger here" refusal, and metrics tails read the fast way."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from meshctl import layout
from meshctl.errors import BadInput


def write_metrics(run_dir: Path, lines: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def careful(run_dir: Path) -> dict:
    """Every line of the tail parsed, in order (how tail_metrics read it before)."""
    data = (run_dir / "metrics.jsonl").read_bytes()[-layout.TAIL_BYTES:]
    return layout._parse_all(data.decode("utf-8", "replace").splitlines())


def test_tail_metrics_agrees_with_parsing_every_line(tmp_path: Path) -> None:
    rng = random.Random(0)
    for trial in range(40):
        lines, step = [], 0
        for _ in range(rng.randint(1, 1500)):  # past TAIL_BYTES: the first line of the tail is cut
            step = max(1, step + rng.choice((1, 1, 1, 1, -20)))  # a requeue re-logs steps since its checkpoint
            record = {"step": step, "tokens": step * 64, "train_loss": rng.random()}
            if rng.random() < 0.05:
                record["val"] = {"validation": {"loss": rng.random(), "perplexity": 3.0}}
            lines.append(json.dumps(record))
            if rng.random() < 0.05:  # the validation line of the same step
                lines.append(json.dumps({"step": step, "val": {"validation": {"loss": rng.random()}}}))
        if trial % 5 == 0:
            lines.append(lines[-1][: len(lines[-1]) // 2])  # a write cut by a kill
        write_metrics(tmp_path / str(trial), lines)
        assert layout.tail_metrics(tmp_path / str(trial)) == careful(tmp_path / str(trial)), trial
    assert layout.tail_metrics(tmp_path / "none") == {}
    write_metrics(tmp_path / "cut", ['{"step": 7, "tok'])
    assert layout.tail_metrics(tmp_path / "cut") == {}


def test_paths_and_the_missing_ledger(tmp_path: Path) -> None:
    assert layout.ledger_path(tmp_path) == tmp_path / "meshctl.sqlite"
    assert layout.run_dir_of(tmp_path, "abc") == tmp_path / "runs" / "abc"
    assert layout.submissions_dir(layout.jobs_dir(tmp_path, "s")) == tmp_path / "jobs" / "s" / "submissions"
    with pytest.raises(BadInput, match=r"--results-dir: no ledger at .*meshctl.sqlite; run `meshctl sweep SPEC`"):
        layout.require_ledger(tmp_path)


def test_reading_runs_does_not_import_submission_code_torch_or_presets() -> None:
    probe = ("import sys\n"
             "import meshctl.layout, meshctl.orchestrate.status, meshctl.orchestrate.control, meshctl.cli.app\n"
             "import meshctl.orchestrate.backends.local, meshctl.orchestrate.backends.slurm\n"
             "bad = ['meshctl.orchestrate.submit', 'meshctl.specs.sweep', 'meshctl.models.presets', 'meshctl.analysis',\n"
             "       'torch', 'lightning', 'submitit', 'pydantic']\n"
             "print([m for m in bad if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Runs trained by meshctl itself (`run_training`, Lightning, real KJV text) for every family, exported once
per session with `meshctl export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.analysis.conftest import kjv_data, one_thread  # noqa: F401  (fixtures: offline HF env, one thread)

FAMILIES = {
    "vanilla": {"n_layer": 4, "vocab_size": 2100},  # 2,112 embedding rows for the 2,048 token ids
    "recursive": {"family": "recursive", "structure": "1+1R2+1", "recurrence": "residual"},
    "mesh": {"family": "recursive", "structure": "1+1R2+1", "recurrence": "mesh"},
    "vanilla_mesh": {"family": "vanilla_mesh", "structure": "1+1+1+1", "recurrence": "mesh"},
}


def run_spec(data: Path, family: str) -> dict:
    from meshctl.data.manifest import load_manifest

    vocab = load_manifest(data).tokenizer.vocab_size
    model = {"n_embd": 64, "n_head": 4, "vocab_size": vocab, "block_size": 64, "padding_multiple": 64,
             "init_std": 0.02, **FAMILIES[family]}
    train = {"max_steps": 40, "global_batch": 16, "micro_batch": 16, "lr": 5e-3, "warmup": 0.1, "log_every": 20,
             "val_every": 40, "val_batches": 2, "ckpt_every": 40}
    return {"model": model, "data": {"path": str(data), "seq_len": 32}, "train": train, "seed": 0}


@pytest.fixture(scope="session")
def export_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export_results")


@pytest.fixture(scope="session")
def trained(kjv_data: Path, export_root: Path):  # noqa: F811
    """family -> run directory under export_root/runs, trained lazily (40 steps, ~2 s each)."""
    from meshctl.train.job import run_training

    done: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in done:
            run_dir = export_root / "runs" / f"{family}-run"
            run_training(run_spec(kjv_data, family), run_dir)
            done[family] = run_dir
        return done[family]

    return get


def cli(*args: str, env: dict | None = None):
    from meshctl.cli.app import app

    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture(scope="session")
def exported(trained, export_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """family -> exported directory, from `meshctl export RUN --out DIR` (the run named by its id)."""
    done: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in done:
            run_dir = trained(family)
            out = tmp_path_factory.mktemp(f"hf-{family}") / "model"
            result = cli("export", run_dir.name, "--out", str(out), "--results-dir", str(export_root), "--format", "json")
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["out"] == str(out)
            done[family] = out
        return done[family]

    return get

"""Fixtures for evaluation and probing: a small KJV corpus, a tiny model trained on it for a few seconds,
and run directories in the layout `meshctl train` writes (spec.json, checkpoints/last.ckpt)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

# No hub in tests; lm-eval's `datasets` reads HF_HOME when first imported, so set it before any test runs.
_HF_HOME = tempfile.mkdtemp(prefix="meshctl-hf-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=_HF_HOME)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Two shared cores: one intra-op thread is several times faster than two contending ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def kjv_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 KJV chapters (Genesis to Numbers), BPE 2048, 10% of chapters held out: ~170k train tokens,
    ~400 held-out cloze passages."""
    from meshctl.data.prepare import prepare
    from meshctl.data.sources import resolve_sources

    root = tmp_path_factory.mktemp("kjv")
    (kjv,) = resolve_sources(["demo:kjv"])
    source = root / "kjv.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in islice(kjv.documents(), 150)), encoding="utf-8")
    prepare([source], root / "data", vocab_size=2048, val_fraction=0.1, seed=0, progress=False)
    return root / "data"


def tiny_spec(vocab_size: int, **changes: Any) -> dict[str, Any]:
    spec = {"n_embd": 64, "n_head": 4, "vocab_size": vocab_size, "block_size": 128, "padding_multiple": 64}
    spec.update(changes)
    if "structure" not in spec and "n_layer" not in spec:
        spec["n_layer"] = 2
    return spec


def write_run(run_dir: Path, model: Any, data_dir: Path, step: int, seq_len: int = 64) -> Path:
    """A run directory as `meshctl train` leaves it: spec.json and a Lightning-style checkpoint whose
    state_dict keys carry the LightningModule's `model.` prefix."""
    import torch

    from meshctl.specs.run import RunSpec

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    spec = RunSpec(model=model.spec.model_dump(mode="json"), data={"path": str(data_dir), "seq_len": seq_len},
                   train={"max_steps": max(step, 1)})
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "global_step": step, "epoch": 0}, run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def train(model: Any, data_dir: Path, steps: int, seq_len: int = 64, batch: int = 16, lr: float = 3e-3) -> float:
    """A plain AdamW loop on random windows of the train split; returns the last loss."""
    import torch
    import torch.nn.functional as F

    from meshctl.data.manifest import load_manifest

    tokens = torch.from_numpy(load_manifest(data_dir).dataset(data_dir, "train").tokens[:].astype("int64"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - seq_len - 1, (batch,), generator=g).tolist()
        windows = torch.stack([tokens[s : s + seq_len + 1] for s in starts])  # (batch, seq + 1)
        loss = F.cross_entropy(model(windows[:, :-1]).flatten(0, 1), windows[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


@pytest.fixture(scope="session")
def results_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def trained_run(kjv_data: Path, results_root: Path) -> Path:
    """A 2-layer d64 vanilla model after 100 steps on the KJV train split (~3 s), as results/runs/<id>."""
    from meshctl.data.manifest import load_manifest
    from meshctl.models import build

    vocab = load_manifest(kjv_data).tokenizer.vocab_size
    model = build(tiny_spec(vocab), seed=0)
    loss = train(model, kjv_data, steps=100)
    assert loss < 5.0, f"training did not progress (loss {loss:.2f})"
    return write_run(results_root / "runs" / "a1b2c3-vanilla", model, kjv_data, step=100)


@pytest.fixture(scope="session")
def mesh_run(kjv_data: Path, results_root: Path) -> Path:
    """A 1+1R2+1 MeSH model after 30 steps, for probing and test-time depth."""
    from meshctl.data.manifest import load_manifest
    from meshctl.models import build

    vocab = load_manifest(kjv_data).tokenizer.vocab_size
    model = build(tiny_spec(vocab, family="recursive", structure="1+1R2+1", recurrence="mesh"), seed=0)
    train(model, kjv_data, steps=30)
    return write_run(results_root / "runs" / "d4e5f6-mesh", model, kjv_data, step=30)

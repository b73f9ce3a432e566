"""Probe metrics on inputs with known answers, and the probe of a real model and run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meshctl.analysis.probe import cka, probe_model, spectrum, stages, update_magnitude
from meshctl.cli.app import app
from meshctl.models import build

g = torch.Generator().manual_seed(0)


def test_cka_known_answers() -> None:
    x = torch.randn(40, 16, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-9)  # distances kept: same kernel
    assert cka(x, 3.0 * x + 1.0) == pytest.approx(1.0, abs=1e-9)  # bandwidth scales with the data
    y = torch.randn(40, 24, generator=g)
    assert cka(x, y) == pytest.approx(cka(y, x), abs=1e-12)
    assert 0.0 <= cka(x, y) < 0.9
    assert math.isnan(cka(x, torch.ones(40, 16)))  # a constant state has no structure


def test_update_magnitude_known_answers() -> None:
    h = torch.randn(10, 8, generator=g)
    assert update_magnitude(h, h) == 0.0  # the identity
    assert update_magnitude(h, torch.zeros_like(h)) == pytest.approx(2.0)
    assert update_magnitude(h, 2 * h) == pytest.approx(2 / 3)
    assert update_magnitude(h, -h) == pytest.approx(2.0)


def test_spectrum_known_answers() -> None:
    u, v = torch.randn(30, 1, generator=g).double(), torch.randn(1, 20, generator=g).double()
    s = spectrum(u @ v)
    assert len(s) == 20 and s[0] == 1.0 and np.all(s[1:] < 1e-12)  # rank 1
    q, _ = torch.linalg.qr(torch.randn(80, 60, generator=g))
    s = spectrum(q * 5.0)
    assert len(s) == 50 and np.allclose(s, 1.0)  # orthogonal columns: flat spectrum, top 50 kept


def test_an_identity_core_does_no_work_and_its_states_are_the_same() -> None:
    model = build({"n_embd": 32, "n_head": 2, "vocab_size": 100, "block_size": 32, "family": "recursive",
                   "structure": "1+1R3+1", "recurrence": "base"}, seed=0).eval()
    with torch.no_grad():  # core output = input: zero its attention and MLP output projections
        for layer in model.core:
            for lin in (layer.attention.dense, layer.mlp.dense_4h_to_h):
                lin.weight.zero_()
                lin.bias.zero_()
    windows = torch.randint(0, 100, (5, 24), generator=g)
    result = probe_model(model, windows, batch_size=2)
    assert result["stages"] == ["prelude", "core_1", "core_2", "core_3", "coda"]
    assert result["states"] == ["h_emb", "h0", "h1", "h2", "h3", "h_out"]
    um = result["update_magnitude"]
    assert all(um[f"core_{t}"]["mean"] == 0.0 for t in (1, 2, 3))
    assert um["prelude"]["mean"] > 0.05 and um["coda"]["mean"] > 0.05
    m = np.array(result["cka"]["mean"])
    assert m.shape == (6, 6) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert np.allclose(m[1:5, 1:5], 1.0)  # h0 = h1 = h2 = h3
    assert m[0, 5] < 0.999
    assert all(len(result["spectrum"][s]["mean"]) == 24 for s in result["states"])  # min(seq 24, dim 32)


def test_vanilla_models_are_probed_layer_by_layer() -> None:
    model = build({"n_embd": 32, "n_head": 2, "vocab_size": 100, "block_size": 32, "n_layer": 3}, seed=0)
    stage_list, states = stages(model, None)
    assert [s for s, _, _ in stage_list] == ["layer_1", "layer_2", "layer_3"]
    assert states == ["h_emb", "layer_1", "layer_2", "layer_3"]


def test_probe_cli_writes_json_and_figures(mesh_run: Path, results_root: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["probe", "d4e5", "--samples", "6", "--results-dir", str(results_root),
                              "--format", "json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    written = json.loads((mesh_run / "probe" / "probe.json").read_text())
    assert written["schema"] == doc["schema"] == "meshctl.probe/1"
    assert written["n_loop"] == written["trained_n_loop"] == 2 and written["data"]["samples"] == 6
    assert written["stages"] == ["prelude", "core_1", "core_2", "coda"]
    for name in written["figures"]:
        assert (mesh_run / "probe" / name).read_bytes()[:4] == b"\x89PNG"
    assert len(written["figures"]) == 3

    out = runner.invoke(app, ["probe", str(mesh_run), "--samples", "3", "--loops", "4", "--no-plots",
                              "--device", "cpu"])
    assert out.exit_code == 0, out.output
    deeper = json.loads((mesh_run / "probe" / "probe.loops4.json").read_text())
    assert deeper["n_loop"] == 4 and deeper["stages"][-2] == "core_4" and "update magnitude" in out.stdout

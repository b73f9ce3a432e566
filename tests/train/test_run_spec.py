"""RunSpec: defaults per scale, resolution to a self-contained spec, errors that name the field."""

from __future__ import annotations

import json

import pytest

from meshctl.errors import BadInput
from meshctl.models import resolve
from meshctl.specs.run import RunSpec, load_run_spec, parse_run_spec
from meshctl.train.hparams import HPARAMS, scale_of


def resolved(model, **train):
    return parse_run_spec({"model": model, "data": {"path": "/data/pile"}, "train": train}).resolved()


@pytest.mark.parametrize(
    "model, lr",
    [("pythia-70m", 1e-3), ("pythia-160m-2+4R2+2-mesh", 6e-4), ("pythia-410m-3+6R3+3-anchor", 3e-4),
     ("pythia-1b-3+5R2+3-mesh", 2.5e-4), ("pythia-1.4b-4+8+8+4-mesh", 2e-4)],
)
def test_paper_presets_get_the_paper_recipe(model, lr):
    spec = resolved(model)
    t = spec.train
    assert (t.lr, spec.data.seq_len, t.global_batch, t.warmup, t.min_lr_ratio) == (lr, 4096, 512, 0.01, 0.1)
    assert (t.betas, t.eps, t.weight_decay, t.precision) == ((0.9, 0.95), 1e-8, 0.01, "bf16-mixed")
    assert t.max_steps == -(-250_000_000_000 // (512 * 4096))
    assert spec.model["block_size"] >= 4096  # the paper's length, though Pythia's block_size is 2048


def test_scale_is_matched_by_shape_not_name():
    variant = resolve({"preset": "tiny-128", "structure": "1+1R2+1", "recurrence": "mesh"})
    assert scale_of(variant) == "tiny-128"
    assert scale_of(resolve({"n_embd": 96, "n_head": 2, "n_layer": 3, "vocab_size": 8192})) is None


def test_resolved_is_self_contained_and_idempotent():
    spec = resolved({"preset": "tiny-64", "structure": "1+1R2+1", "recurrence": "mesh"}, tokens=100_000)
    assert spec.is_resolved
    assert spec.model["family"] == "recursive" and "preset" not in spec.model
    assert spec.train.max_steps == -(-100_000 // (16 * 128)) and spec.train.tokens is None
    assert spec.data.eval_sets["validation"].path == "/data/pile"
    assert spec.resolved() == spec
    again = RunSpec.model_validate_json(json.dumps(spec.model_dump(mode="json")))
    assert again == spec and again.canonical_json() == spec.canonical_json()
    assert HPARAMS["tiny-64"].lr == spec.train.lr


def test_batch_in_tokens_and_default_micro_batch():
    spec = resolved("tiny-128", global_batch_tokens=48 * 128, devices=2, max_steps=10)
    assert spec.train.global_batch == 48 and spec.train.micro_batch == 12 and spec.train.accumulate == 2


@pytest.mark.parametrize(
    "train, field",
    [({"global_batch": 10, "micro_batch": 4}, "train.global_batch"),
     ({"global_batch": 16, "micro_batch": 4, "devices": 3}, "train.global_batch"),
     ({"tokens": 10, "max_steps": 10}, "train.max_steps"),
     ({"global_batch_tokens": 100}, "train.global_batch_tokens"),
     ({"lr": -1}, "train.lr"),
     ({"precision": "16-mixed"}, "train.precision"),
     ({"betas": [0.9]}, "train.betas"),
     ({"nope": 1}, "train.nope")],
)
def test_bad_train_fields_are_named(train, field):
    with pytest.raises(BadInput, match=f"^(run.yaml: )?{field}"):
        parse_run_spec({"model": "tiny-64", "data": {"path": "d"}, "train": train}, "run.yaml").resolved()


def test_bad_model_and_missing_defaults_are_named():
    with pytest.raises(BadInput, match="model: unknown preset"):
        parse_run_spec({"model": "tiny-65", "data": {"path": "d"}})
    with pytest.raises(BadInput, match="model: structure 1\\+1R3\\+1 unrolls to 5"):
        parse_run_spec({"model": {"preset": "tiny-64", "structure": "1+1R3+1"}, "data": {"path": "d"}})
    with pytest.raises(BadInput, match="data.seq_len: .* matches no preset scale"):
        resolved({"n_embd": 96, "n_head": 2, "n_layer": 3})
    with pytest.raises(BadInput, match="data.seq_len: 2048 exceeds the model's block_size 1024"):
        parse_run_spec({"model": "tiny-64", "data": {"path": "d", "seq_len": 2048}}).resolved()


def test_load_run_spec_yaml_errors(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("model: tiny-64\ndata:\n  path: d\n  seq_len: [32\n")
    with pytest.raises(BadInput, match=r"run.yaml line \d+: invalid YAML"):
        load_run_spec(bad)
    bad.write_text("model: tiny-64\ndata: {path: d, sequence_length: 32}\n")
    with pytest.raises(BadInput, match="data.sequence_length: Extra inputs are not permitted"):
        load_run_spec(bad)
    with pytest.raises(BadInput, match="no such run spec"):
        load_run_spec(tmp_path / "missing.yaml")
    good = tmp_path / "run.json"
    good.write_text(json.dumps({"model": "tiny-64", "data": {"path": "d"}, "train": {"precision": 32}}))
    assert load_run_spec(good).train.precision == "32"

"""prepare on a slice of the real demo corpus: manifest, document split, exact decode, overwrite rules."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from meshctl.data.indexed import IndexedDataset
from meshctl.data.manifest import load_manifest
from meshctl.data.prepare import prepare
from meshctl.data.tokenizer import load_tokenizer, sha256_file, train_bpe
from meshctl.data.windows import TokenWindows
from meshctl.errors import BadInput


def decoded(directory, split):
    tok = load_tokenizer(directory / "tokenizer.json")
    ds = IndexedDataset(directory / split)
    out = []
    for i in range(len(ds)):
        seq = ds[i]
        assert seq[-1] == 0 and 0 not in seq[:-1]  # exactly one EOD, at the end
        out.append(tok.decode(seq[:-1].tolist(), skip_special_tokens=False))
    return out


def test_manifest(prepared_demo, demo_documents):
    m = load_manifest(prepared_demo)
    raw = json.loads((prepared_demo / "manifest.json").read_text())
    assert set(raw) == {"format", "sources", "tokenizer", "splits", "seed", "created", "settings"}
    assert raw["format"] == 1 and raw["seed"] == 0
    assert raw["tokenizer"] == {
        "kind": "bpe",
        "path": "tokenizer.json",
        "sha256": sha256_file(prepared_demo / "tokenizer.json"),
        "vocab_size": 4096,
        "eod_token_id": 0,
    }
    tok = load_tokenizer(prepared_demo / "tokenizer.json")
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|padding|>") == 1
    assert m.sources[0].documents == len(demo_documents)
    train, val = m.splits["train"], m.splits["validation"]
    assert train.prefix == "train" and val.prefix == "validation"
    assert train.documents + val.documents == len(demo_documents)
    assert val.documents == round(0.05 * len(demo_documents))
    for name, split in m.splits.items():
        ds = IndexedDataset(m.prefix(prepared_demo, name))
        assert ds.num_tokens == split.tokens and ds.num_documents == split.documents
        assert ds.dtype == np.uint16


def test_splits_are_disjoint_documents_that_decode_to_the_source(prepared_demo, demo_documents):
    train, val = decoded(prepared_demo, "train"), decoded(prepared_demo, "validation")
    assert Counter(train) + Counter(val) == Counter(demo_documents)
    assert not set(train) & set(val)
    # each split keeps source order
    position = {d: i for i, d in enumerate(demo_documents)}
    assert [position[d] for d in train] == sorted(position[d] for d in train)


def test_windows_over_prepared_data(prepared_demo):
    windows = TokenWindows(prepared_demo / "train", seq_len=128, seed=0)
    assert len(windows) == (load_manifest(prepared_demo).splits["train"].tokens - 1) // 128
    assert windows[0].shape == (129,) and int(windows[0].max()) < 4096


@pytest.fixture
def small_source(tmp_path, demo_documents):
    src = tmp_path / "small.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in demo_documents[:80]), encoding="utf-8")
    return src


def test_deterministic_per_seed(tmp_path, small_source):
    a = prepare([small_source], tmp_path / "a", vocab_size=1024, val_fraction=0.1, seed=1, progress=False)
    b = prepare([small_source], tmp_path / "b", vocab_size=1024, val_fraction=0.1, seed=1, progress=False)
    c = prepare([small_source], tmp_path / "c", vocab_size=1024, val_fraction=0.1, seed=2, progress=False)
    assert a.tokenizer.sha256 == b.tokenizer.sha256
    for name in ("train.bin", "train.idx", "validation.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert decoded(tmp_path / "a", "validation") != decoded(tmp_path / "c", "validation")
    assert a.splits["validation"].documents == c.splits["validation"].documents == 8


def test_max_documents_and_no_validation(tmp_path, small_source):
    m = prepare([small_source], tmp_path / "o", vocab_size=1024, val_fraction=0, max_documents=20, progress=False)
    assert m.splits["train"].documents == 20 and m.splits["validation"].documents == 0
    assert len(IndexedDataset(tmp_path / "o" / "validation")) == 0
    load_manifest(tmp_path / "o")


def test_given_tokenizer_file_is_copied_with_its_hash(tmp_path, small_source, demo_documents):
    tok_path = tmp_path / "mine.json"
    train_bpe(demo_documents[:50], vocab_size=600).save(str(tok_path))
    m = prepare([small_source], tmp_path / "o", tokenizer=str(tok_path), max_documents=10, progress=False)
    assert m.tokenizer.kind == "file" and m.tokenizer.sha256 == sha256_file(tok_path)
    assert m.tokenizer.vocab_size == load_tokenizer(tok_path).get_vocab_size(with_added_tokens=True)


def test_overwrite_rules(tmp_path, small_source):
    out = tmp_path / "o"
    kw = dict(vocab_size=1024, max_documents=10, progress=False)
    prepare([small_source], out, **kw)
    prepare([small_source], out, **kw)  # same request: rewriting is harmless
    with pytest.raises(BadInput, match="holds a different prepared dataset; pass --force"):
        prepare([small_source], out, **{**kw, "seed": 5})
    assert load_manifest(out).seed == 0
    assert prepare([small_source], out, force=True, **{**kw, "seed": 5}).seed == 5


def test_load_manifest_refuses_missing_or_incomplete(tmp_path, small_source):
    with pytest.raises(BadInput, match="not a prepared data directory"):
        load_manifest(tmp_path)
    prepare([small_source], tmp_path / "o", vocab_size=1024, max_documents=10, progress=False)
    (tmp_path / "o" / "validation.bin").unlink()
    with pytest.raises(BadInput, match=r"incomplete prepared directory \(missing .*validation\.bin\)"):
        load_manifest(tmp_path / "o")
    (tmp_path / "o" / "manifest.json").write_text('{"format": 1}')
    with pytest.raises(BadInput, match="unreadable manifest"):
        load_manifest(tmp_path / "o")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"max_documents": 0}, "--max-documents"),
        ({"vocab_size": 100}, "--vocab-size 100"),
        ({"tokenizer": "missing/tokenizer.json"}, "--tokenizer missing"),
    ],
)
def test_bad_arguments_refused_before_work(tmp_path, small_source, kwargs, match):
    with pytest.raises(BadInput, match=match):
        prepare([small_source], tmp_path / "o", progress=False, **kwargs)
    assert not (tmp_path / "o").exists()

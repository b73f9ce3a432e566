"""`meshctl data import` as a user runs it on Pythia-shaped data (real text, the real GPT-NeoX-20B tokenizer):
sharded == unsharded, a held-out tail never trained on, a tiny training run, and every bad input refused
with one line, exit 2 and no manifest.json written."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meshctl.cli.app import app
from meshctl.data.indexed import IndexedDataset
from meshctl.data.manifest import load_manifest
from meshctl.train.datamodule import StepSampler, open_windows
from tests.data.pythia_like import SAMPLE

SEQ = SAMPLE - 1


def meshctl(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def imported(src: Path, out: Path, *extra: str) -> dict:
    result = meshctl("data", "import", src, "--out", out, "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def windows(out: Path, split: str, mode: str = "samples") -> list[list[int]]:
    w = open_windows(str(out), split, SEQ if mode == "samples" else 50, mode)
    return [w[i].tolist() for i in range(len(w))]


def test_sharded_import_equals_unsharded(pythia_like, tmp_path):
    a = imported(pythia_like["plain"] / "document", tmp_path / "a", "--val-samples", "8")
    b = imported(pythia_like["sharded"] / "document.idx", tmp_path / "b", "--val-samples", "8")
    shards = b["manifest"]["splits"]["train"]["shards"]
    assert len(shards) == 21 and shards[0]["path"].endswith("document-00000-of-00020.bin")
    assert sum(s["bytes"] for s in shards) == (pythia_like["plain"] / "document.bin").stat().st_size
    assert all(Path(s["path"]).is_absolute() for s in shards)  # the data stays outside --out
    for split in ("train", "validation"):
        assert a["manifest"]["splits"][split]["tokens"] == b["manifest"]["splits"][split]["tokens"]
        for mode in ("samples", "packed"):
            assert windows(tmp_path / "a", split, mode) == windows(tmp_path / "b", split, mode)
    assert (tmp_path / "b" / "tokenizer.json").is_file() and a["manifest"]["tokenizer"]["vocab_size"] == 50277
    info = meshctl("data", "info", tmp_path / "b", "--format", "json")
    assert info.exit_code == 0 and json.loads(info.stdout)["manifest"] == b["manifest"]
    # a shard name finds the set too, and the same request again is harmless
    imported(pythia_like["sharded"] / "document-00007-of-00020.bin", tmp_path / "b", "--val-samples", "8")


def test_held_out_tail_is_never_trained_on(pythia_like, tmp_path):
    doc = imported(pythia_like["sharded"] / "document", tmp_path / "o", "--val-samples", "10")
    every = IndexedDataset(pythia_like["plain"] / "document")
    train, val = windows(tmp_path / "o", "train"), windows(tmp_path / "o", "validation")
    n = len(every)
    assert len(train) == n - 10 and doc["manifest"]["splits"]["validation"]["entries"] == [n - 10, n]
    assert val == [every[i].tolist() for i in range(n - 10, n)] and train[-1] == every[n - 11].tolist()
    sampler = StepSampler(len(train), 8, max_steps=3 * len(train) // 8, seed=0, shuffle=True)
    seen = {tuple(train[i]) for i in sampler}  # three shuffled epochs
    assert seen <= {tuple(t) for t in train} and not seen & {tuple(v) for v in val}


def test_validation_from_another_directory(pythia_like, tmp_path):
    imported(pythia_like["plain"] / "document", tmp_path / "v", "--val-samples", "5")
    doc = imported(pythia_like["sharded"] / "document", tmp_path / "o", "--validation", f"{tmp_path / 'v'}:validation")
    assert doc["manifest"]["splits"]["validation"]["origin"] == f"{tmp_path / 'v'}:validation"
    assert windows(tmp_path / "o", "validation") == windows(tmp_path / "v", "validation")
    assert len(windows(tmp_path / "o", "train")) == len(windows(tmp_path / "v", "train")) + 5


def break_pointer(d: Path) -> None:
    idx = d / "document.idx"
    data = bytearray(idx.read_bytes())
    n = struct.unpack_from("<Q", data, 18)[0]
    struct.pack_into("<q", data, 34 + 4 * n + 8 * 3, 7)  # entry 3's pointer
    idx.write_bytes(bytes(data))


def break_doc_idx(d: Path) -> None:
    idx = d / "document.idx"
    data = bytearray(idx.read_bytes())
    struct.pack_into("<q", data, len(data) - 8, 10**9)  # doc_idx past the entries
    idx.write_bytes(bytes(data))


def truncate(p: Path, by: int = 3) -> None:
    p.write_bytes(p.read_bytes()[:-by])


CASES = {
    "gap": (lambda d: (d / "document-00005-of-00020.bin").unlink(), "document-00005-of-00020.bin: shard missing", []),
    "fewer": (lambda d: [(d / f"document-{i:05d}-of-00020.bin").unlink() for i in (18, 19, 20)],
              "document-00018-of-00020.bin: shard missing", []),
    "last": (lambda d: (d / "document-00020-of-00020.bin").unlink(), "document-00019-of-00020.bin: truncated (20 shards hold", []),
    "truncated": (lambda d: truncate(d / "document-00020-of-00020.bin"), "document-00020-of-00020.bin: truncated", []),
    "extra": (lambda d: (d / "document-00020-of-00020.bin").write_bytes(
        (d / "document-00020-of-00020.bin").read_bytes() + b"\0\0"), "needs exactly", []),
    "pointers": (break_pointer, "document.idx: pointers disagree with sizes at entry", []),
    "doc_idx": (break_doc_idx, "document.idx: doc_idx runs", []),
    "no_idx": (lambda d: (d / "document.idx").unlink(), "document.idx: file not found", []),
    "val_too_many": (lambda d: None, "--val-samples 100000", ["--val-samples", "100000"]),
    "no_validation": (lambda d: None, "give --val-samples N", None),
    "bpe": (lambda d: None, "--tokenizer: the data is already tokenized", ["--val-samples", "1", "--tokenizer", "bpe"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_exit_2_no_manifest(case, pythia_like, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pythia_like["sharded"], data)
    damage, needle, extra = CASES[case]
    damage(data)
    out = tmp_path / "out"
    result = meshctl("data", "import", data / "document", "--out", out, *(["--val-samples", "4"] if extra == [] else extra or []))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert not (out / "manifest.json").exists()


def test_tokenizer_smaller_than_the_data_is_refused(pythia_like, prepared_demo, tmp_path):
    result = meshctl("data", "import", pythia_like["plain"] / "document", "--out", tmp_path / "o", "--val-samples", "2",
                     "--tokenizer", prepared_demo / "tokenizer.json")
    assert result.exit_code == 2 and "vocabulary of 4096 ids" in result.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()
    # and a validation set made with another tokenizer
    result = meshctl("data", "import", pythia_like["plain"] / "document", "--out", tmp_path / "o", "--validation", prepared_demo)
    assert result.exit_code == 2 and "tokenized with another tokenizer" in result.stderr


def test_info_and_training_refuse_a_shard_changed_after_import(pythia_like, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pythia_like["sharded"], data)
    imported(data / "document", tmp_path / "o", "--val-samples", "4")
    truncate(data / "document-00003-of-00020.bin", 1)
    result = meshctl("data", "info", tmp_path / "o")
    assert result.exit_code == 2 and "document-00003-of-00020.bin: shard 4095 bytes" not in result.stderr
    assert "document-00003-of-00020.bin: shard" in result.stderr and result.stderr.count("\n") == 1
    with pytest.raises(Exception, match="manifest records"):
        load_manifest(tmp_path / "o")


def test_training_on_an_imported_sharded_directory(pythia_like, tmp_path):
    from meshctl.train.job import run_training

    imported(pythia_like["sharded"] / "document", tmp_path / "o", "--val-samples", "16")
    spec = {
        "model": {"preset": "tiny-64", "vocab_size": 50277},
        "data": {"path": str(tmp_path / "o"), "seq_len": SEQ, "mode": "samples"},
        "train": {"max_steps": 6, "global_batch": 8, "micro_batch": 8, "lr": 3e-3, "warmup": 0.1, "log_every": 3,
                  "val_every": 6, "val_batches": 2, "ckpt_every": 6},
        "seed": 0,
    }
    final = run_training(spec, tmp_path / "run")
    assert np.isfinite(final["val_loss"]) and final["val"]["validation"]["tokens"] == 16 * SEQ
    written = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert written["data"]["shuffle"] is False  # samples mode keeps Pythia's order by default

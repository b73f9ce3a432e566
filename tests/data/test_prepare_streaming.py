"""prepare at corpus scale: bounded writer state, the same bytes for any --workers, the seeded block split,
gpt-neox's .idx layout read back independently, and a SIGKILLed prepare that is refused and then redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from itertools import islice

import numpy as np
import pytest

from meshctl.data.corpus import BLOCK, Corpus, held_out
from meshctl.data.indexed import IndexedDatasetWriter
from meshctl.data.prepare import prepare
from meshctl.data.sources import resolve_sources
from meshctl.data.tokenizer import load_tokenizer, train_bpe
from meshctl.errors import BadInput

OUTPUTS = ("train.bin", "train.idx", "validation.bin", "validation.idx", "tokenizer.json")


@pytest.fixture(scope="module")
def wiki() -> list[str]:
    """2,500 real Wikipedia lead sections: three blocks of the split, so the worker pool runs."""
    return list(islice(resolve_sources(["demo:wiki"])[0].documents(), 2500))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, wiki):
    root = tmp_path_factory.mktemp("streaming")
    src = root / "wiki.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in wiki), encoding="utf-8")
    tok = root / "tokenizer.json"
    train_bpe(wiki[:200], vocab_size=1024).save(str(tok))
    return src, tok


def same_outputs(a, b) -> None:
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    strip = lambda d: {k: v for k, v in json.loads((d / "manifest.json").read_text()).items() if k != "created"}  # noqa: E731
    assert strip(a) == strip(b)


def test_writer_state_does_not_grow_with_documents(tmp_path):
    writer = IndexedDatasetWriter(tmp_path / "w", 1024)
    doc = np.arange(50, dtype=np.int64)
    for _ in range(1000):
        writer.add_document(doc)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(5_000):
        writer.add_document(doc)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 16_000  # bytes: nothing per document (buffered file writes only)
    assert not any(isinstance(v, (list, dict, np.ndarray)) for v in vars(writer).values())
    writer.close()
    assert (writer.num_documents, writer.num_tokens) == (6_000, 6_000 * 50)


def read_idx_independently(prefix):
    """gpt-neox's MMapIndexedDataset.Index layout, read with numpy alone (reference/pythia-data-flops.md §4.3)."""
    raw = open(f"{prefix}.idx", "rb").read()
    header = np.frombuffer(raw, count=1, dtype=np.dtype(
        [("magic", "V9"), ("version", "<u8"), ("dtype", "u1"), ("len", "<u8"), ("doc_count", "<u8")]))[0]
    assert raw[:9] == b"MMIDIDX\x00\x00" and header["version"] == 1
    n, docs, off = int(header["len"]), int(header["doc_count"]), 34
    sizes = np.frombuffer(raw, "<i4", n, off)
    pointers = np.frombuffer(raw, "<i8", n, off + 4 * n)
    doc_idx = np.frombuffer(raw, "<i8", docs, off + 12 * n)
    assert len(raw) == off + 12 * n + 8 * docs
    dtype = {8: np.uint16, 4: np.int32}[int(header["dtype"])]
    return sizes, pointers, doc_idx, np.fromfile(f"{prefix}.bin", dtype=dtype)


def test_idx_layout_read_by_an_independent_reader(tmp_path, corpus, wiki):
    src, tok_path = corpus
    m = prepare([src], tmp_path / "o", tokenizer=str(tok_path), val_fraction=0.02, workers=1, progress=False)
    tok = load_tokenizer(tmp_path / "o" / "tokenizer.json")
    got = []
    for split in ("train", "validation"):
        sizes, pointers, doc_idx, tokens = read_idx_independently(tmp_path / "o" / split)
        assert len(sizes) == m.splits[split].documents and tokens.size == sizes.sum() == m.splits[split].tokens
        assert np.array_equal(pointers, np.concatenate(([0], np.cumsum(sizes)[:-1])) * tokens.itemsize)
        assert np.array_equal(doc_idx, np.arange(len(sizes) + 1))  # one sequence per document
        for start, size in zip(pointers // tokens.itemsize, sizes):
            seq = tokens[start : start + size]
            assert seq[-1] == 0
            got.append(tok.decode(seq[:-1].tolist(), skip_special_tokens=False))
    assert sorted(got) == sorted(wiki)


def test_output_is_the_same_for_any_number_of_workers(tmp_path, corpus):
    src, tok_path = corpus
    for workers in (1, 2):
        prepare([src], tmp_path / f"w{workers}", tokenizer=str(tok_path), workers=workers, progress=False)
    same_outputs(tmp_path / "w1", tmp_path / "w2")


@pytest.mark.parametrize("n", [2, 3, 7, 99, BLOCK, BLOCK + 1, 3 * BLOCK - 5, 10 * BLOCK])
@pytest.mark.parametrize("fraction", [0.0004, 0.01, 0.3])
def test_block_split_totals_and_reproducibility(n, fraction):
    def masks(seed):
        full, last = divmod(n, BLOCK)
        sizes = [BLOCK] * full + ([last] if last else [])
        totals = np.cumsum(sizes)
        return [held_out(k, s, int(t), k == len(sizes) - 1, fraction, seed) for k, (s, t) in enumerate(zip(sizes, totals))]

    a, b = masks(3), masks(3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    held = int(sum(m.sum() for m in a))
    assert held == min(max(1, round(n * fraction)), n - 1)  # never an empty validation split, never all
    if n * fraction >= 1:  # some block has a choice to make
        assert any(not np.array_equal(x, y) for x, y in zip(a, masks(4)))


def test_split_is_seeded_and_streamed(tmp_path, corpus, wiki):
    src, _ = corpus
    sources = resolve_sources([src])
    one = [b.held_out for b in Corpus(sources, None, 0.05, seed=7).blocks()]
    again = Corpus(sources, None, 0.05, seed=7)
    assert all(np.array_equal(x, b.held_out) for x, b in zip(one, again.blocks()))
    assert [len(m) for m in one] == [BLOCK, BLOCK, len(wiki) - 2 * BLOCK]
    assert sum(int(m.sum()) for m in one) == round(0.05 * len(wiki))
    assert again.records[0].documents == len(wiki) and again.bytes_read == src.stat().st_size


def test_single_document_and_empty_corpus_are_refused(tmp_path):
    (tmp_path / "one.txt").write_text("only one document")
    with pytest.raises(BadInput, match="1 document cannot be split"):
        prepare([tmp_path / "one.txt"], tmp_path / "o", tokenizer="neox", progress=False)
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(BadInput, match="no non-empty documents"):
        prepare([tmp_path / "blank.txt"], tmp_path / "o2", tokenizer="neox", progress=False)
    assert not list((tmp_path / "o").glob("*.tmp-*")) and not (tmp_path / "o" / "manifest.json").exists()


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "meshctl", "data", *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_must_be_positive(tmp_path, corpus, workers):
    out = cli("prepare", corpus[0], "--out", tmp_path / "o", "--workers", workers)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--workers" in out.stderr
    assert not (tmp_path / "o").exists()


def test_killed_prepare_is_refused_then_redone_from_scratch(tmp_path, corpus, wiki):
    src = tmp_path / "big.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for _ in range(2):  # 5,000 documents, 2.5 MB: a few seconds of tokenizing
            f.writelines(json.dumps({"text": d}) + "\n" for d in wiki)
    args = ["prepare", src, "--out", tmp_path / "o", "--tokenizer", corpus[1], "--workers", "1", "--format", "json"]
    proc = subprocess.Popen([sys.executable, "-m", "meshctl", "data", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in (tmp_path / "o").glob("train.bin.tmp-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "prepare ended before it could be killed"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert list((tmp_path / "o").glob("*.tmp-*")) and not (tmp_path / "o" / "manifest.json").exists()
    info = cli("info", tmp_path / "o")
    assert info.returncode == 2 and "not a prepared data directory" in info.stderr

    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert not list((tmp_path / "o").glob("*.tmp-*"))  # the dead run's temp files are gone
    prepare([src], tmp_path / "ref", tokenizer=str(corpus[1]), workers=1, progress=False)
    same_outputs(tmp_path / "o", tmp_path / "ref")
    assert cli("info", tmp_path / "o").returncode == 0

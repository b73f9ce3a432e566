"""The .bin/.idx pair byte for byte against the MMIDIDX layout (reference/pythia-data-flops.md §4.3)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from meshctl.data.indexed import IndexedDataset, IndexedDatasetWriter
from meshctl.errors import BadInput

DOCS = [[5, 6, 7, 0], [8, 0], [], [9, 10, 11, 12, 13, 0]]


def write(prefix, docs=DOCS, vocab_size=100):
    with IndexedDatasetWriter(prefix, vocab_size) as w:
        for d in docs:
            w.add_document(d)
    return prefix


def test_round_trip(tmp_path):
    ds = IndexedDataset(write(tmp_path / "d"))
    assert len(ds) == len(DOCS)
    assert [ds[i].tolist() for i in range(len(ds))] == DOCS
    assert ds[-1].tolist() == DOCS[-1]
    assert ds.sizes.tolist() == [4, 2, 0, 6]
    assert ds.doc_idx.tolist() == [0, 1, 2, 3, 4]
    assert ds.num_tokens == 12 and ds.num_documents == 4
    assert ds.dtype == np.uint16
    with pytest.raises(IndexError):
        ds[4]


def test_idx_bytes_field_by_field(tmp_path):
    write(tmp_path / "d")
    raw = (tmp_path / "d.idx").read_bytes()
    n, docs = len(DOCS), len(DOCS) + 1
    assert raw[0:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<Q", raw, 9) == (1,)
    assert struct.unpack_from("<B", raw, 17) == (8,)  # uint16
    assert struct.unpack_from("<Q", raw, 18) == (n,)
    assert struct.unpack_from("<Q", raw, 26) == (docs,)
    assert struct.unpack_from(f"<{n}i", raw, 34) == (4, 2, 0, 6)
    assert struct.unpack_from(f"<{n}q", raw, 34 + 4 * n) == (0, 8, 12, 12)  # byte offsets, 2 bytes per token
    assert struct.unpack_from(f"<{docs}q", raw, 34 + 12 * n) == (0, 1, 2, 3, 4)
    assert len(raw) == 34 + 12 * n + 8 * docs
    bin_ = (tmp_path / "d.bin").read_bytes()
    assert bin_ == np.array([t for d in DOCS for t in d], dtype="<u2").tobytes()


@pytest.mark.parametrize(("vocab", "code", "dtype"), [(65499, 8, np.uint16), (65500, 4, np.int32), (50277, 8, np.uint16)])
def test_dtype_choice(tmp_path, vocab, code, dtype):
    write(tmp_path / "d", [[vocab - 1, 0]], vocab_size=vocab)
    assert (tmp_path / "d.idx").read_bytes()[17] == code
    ds = IndexedDataset(tmp_path / "d")
    assert ds.dtype == dtype and ds[0].tolist() == [vocab - 1, 0]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with IndexedDatasetWriter(tmp_path / "d", 10) as w:
            w.add_document([1, 2])
            w.add_document([11])  # out of vocab
    assert list(tmp_path.iterdir()) == []


def test_missing_files(tmp_path):
    with pytest.raises(BadInput, match="file not found"):
        IndexedDataset(tmp_path / "nope")
    write(tmp_path / "d")
    (tmp_path / "d.bin").unlink()
    with pytest.raises(BadInput, match=r"d\.bin: file not found"):
        IndexedDataset(tmp_path / "d")


def test_bad_magic_version_dtype(tmp_path):
    write(tmp_path / "d")
    idx = tmp_path / "d.idx"
    raw = bytearray(idx.read_bytes())
    idx.write_bytes(b"TNTIDX\x00\x00" + raw[8:])
    with pytest.raises(BadInput, match="bad magic"):
        IndexedDataset(tmp_path / "d")
    idx.write_bytes(raw[:9] + struct.pack("<Q", 2) + raw[17:])
    with pytest.raises(BadInput, match="version 2"):
        IndexedDataset(tmp_path / "d")
    idx.write_bytes(raw[:17] + bytes([9]) + raw[18:])
    with pytest.raises(BadInput, match="dtype code 9"):
        IndexedDataset(tmp_path / "d")
    idx.write_bytes(raw[:40])
    with pytest.raises(BadInput, match="truncated index"):
        IndexedDataset(tmp_path / "d")


def test_truncated_bin(tmp_path):
    write(tmp_path / "d")
    bin_ = tmp_path / "d.bin"
    bin_.write_bytes(bin_.read_bytes()[:-2])
    with pytest.raises(BadInput, match="truncated") as err:
        IndexedDataset(tmp_path / "d")
    assert "\n" not in str(err.value)


def test_pickle_reopens(tmp_path):
    import pickle

    ds = pickle.loads(pickle.dumps(IndexedDataset(write(tmp_path / "d"))))
    assert ds[3].tolist() == DOCS[3]

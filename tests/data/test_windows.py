"""TokenWindows: Megatron-style packed windows and Pythia-style fixed samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshctl.data.indexed import IndexedDataset, IndexedDatasetWriter
from meshctl.data.windows import TokenWindows
from meshctl.errors import BadInput


def dataset(tmp_path, docs, vocab=1000):
    with IndexedDatasetWriter(tmp_path / "d", vocab) as w:
        for d in docs:
            w.add_document(d)
    return IndexedDataset(tmp_path / "d")


def test_packed_windows_overlap_one_token(tmp_path):
    docs = [list(range(1, 8)) + [0], list(range(10, 15)) + [0], [20, 21, 0]]  # 17 tokens
    stream = [t for d in docs for t in d]
    ds = dataset(tmp_path, docs)
    w = TokenWindows(ds, seq_len=4, seed=None)
    assert len(w) == (17 - 1) // 4 == 4
    for i in range(len(w)):
        item = w[i]
        assert item.dtype == torch.int64 and item.shape == (5,)
        assert item.tolist() == stream[i * 4 : i * 4 + 5]
    assert w[3][-1].item() == stream[16]  # last window ends exactly at the stream's end
    x, y = w[0][:-1], w[0][1:]
    assert torch.equal(x[1:], y[:-1])


def test_packed_drops_remainder(tmp_path):
    w = TokenWindows(dataset(tmp_path, [list(range(1, 11))]), seq_len=4, seed=None)  # 10 tokens
    assert len(w) == 2 and w[1].tolist() == [5, 6, 7, 8, 9]


def test_seed_permutes_deterministically(tmp_path):
    ds = dataset(tmp_path, [list(range(1, 200))])
    plain = [w.tolist() for w in TokenWindows(ds, 8, seed=None)]
    a = [w.tolist() for w in TokenWindows(ds, 8, seed=1)]
    b = [w.tolist() for w in TokenWindows(ds, 8, seed=1)]
    c = [w.tolist() for w in TokenWindows(ds, 8, seed=2)]
    assert a == b and a != c and a != plain
    assert sorted(a) == sorted(plain) == sorted(c)


def test_samples_mode(tmp_path):
    rows = np.arange(3 * 9).reshape(3, 9) % 1000
    w = TokenWindows(dataset(tmp_path, rows), seq_len=8, mode="samples", seed=None)
    assert len(w) == 3 and w[2].tolist() == rows[2].tolist()
    shuffled = TokenWindows(dataset(tmp_path, rows), seq_len=8, mode="samples", seed=0)
    assert sorted(t.tolist() for t in shuffled) == rows.tolist()


def test_samples_refuses_other_lengths(tmp_path):
    ds = dataset(tmp_path, [list(range(9)), list(range(8))])
    with pytest.raises(BadInput, match="entry 1 has 8 tokens"):
        TokenWindows(ds, seq_len=8, mode="samples")


def test_too_short_and_bad_args(tmp_path):
    ds = dataset(tmp_path, [[1, 2, 3]])
    with pytest.raises(BadInput, match="cannot fill one window"):
        TokenWindows(ds, seq_len=3)
    with pytest.raises(BadInput, match="seq_len"):
        TokenWindows(ds, seq_len=0)
    with pytest.raises(BadInput, match="mode"):
        TokenWindows(ds, seq_len=1, mode="nope")  # type: ignore[arg-type]


def test_dataloader_with_workers(tmp_path):
    ds = dataset(tmp_path, [list(range(1, 101))])
    loader = torch.utils.data.DataLoader(TokenWindows(ds, 9, seed=3), batch_size=4, num_workers=1)
    batches = list(loader)
    assert batches[0].shape == (4, 10) and sum(len(b) for b in batches) == 11

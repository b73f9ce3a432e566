"""The sharded reader: 21 byte-range files read as the one .bin they concatenate to, tokens and samples
straddling shard boundaries included; and the pointwise shuffle that replaces per-epoch permutations."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest

from meshctl.data.indexed import IndexedDataset
from meshctl.data.permutation import FeistelPermutation
from meshctl.data.shards import shard_files
from meshctl.data.windows import TokenWindows, first_other
from meshctl.errors import BadInput
from meshctl.train.datamodule import StepSampler

from tests.data.pythia_like import CUTS, SAMPLE


def test_shards_read_as_the_unsharded_file(pythia_like):
    plain = IndexedDataset(pythia_like["plain"] / "document")
    sharded = IndexedDataset(pythia_like["sharded"] / "document")  # finds the 21 shards itself
    assert len(sharded.bin_files()) == 21 and len(sharded) == len(plain) > 100
    for i in range(len(plain)):
        assert np.array_equal(sharded[i], plain[i]), i
    whole = plain.tokens[:]
    assert np.array_equal(sharded.tokens[:], whole) and len(sharded.tokens) == len(whole)
    for cut in CUTS:  # token ranges around each odd boundary: a token split over two files
        t = cut // 2
        assert np.array_equal(sharded.tokens[t - 3 : t + 70], whole[t - 3 : t + 70])
        assert sharded.tokens[t] == whole[t]
    assert np.array_equal(pickle.loads(pickle.dumps(sharded))[7], plain[7])


def test_windows_and_entry_ranges_across_shards(pythia_like):
    plain = IndexedDataset(pythia_like["plain"] / "document")
    sharded = IndexedDataset(pythia_like["sharded"] / "document")
    for mode, seq in (("samples", SAMPLE - 1), ("packed", 50)):
        a, b = TokenWindows(plain, seq, mode, seed=None), TokenWindows(sharded, seq, mode, seed=None)
        assert len(a) == len(b)
        assert all(np.array_equal(a[i], b[i]) for i in range(len(a)))
    tail = IndexedDataset(pythia_like["sharded"] / "document", sharded.bin_files(), (len(plain) - 5, len(plain)))
    assert len(tail) == 5 and np.array_equal(tail[0], plain[len(plain) - 5])
    assert np.array_equal(tail.tokens[:], np.concatenate([plain[i] for i in range(len(plain) - 5, len(plain))]))
    assert TokenWindows(tail, 50).num_windows == (5 * SAMPLE - 1) // 50


def test_shard_numbering_is_checked(tmp_path):
    for i in (0, 1, 3):
        (tmp_path / f"d-{i:05d}-of-00003.bin").write_bytes(b"xx")
    with pytest.raises(BadInput, match=r"d-00002-of-00003\.bin: shard missing"):
        shard_files(tmp_path / "d")
    (tmp_path / "d-00002-of-00003.bin").write_bytes(b"")
    assert [p.name[:7] for p in shard_files(tmp_path / "d")] == ["d-00000", "d-00001", "d-00002", "d-00003"]
    assert shard_files(tmp_path / "other") == []


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 65, 1000, 4099])
def test_feistel_is_a_seeded_bijection(n):
    p = FeistelPermutation(n, [3, 1])
    assert sorted(p[0:n].tolist()) == list(range(n))
    assert np.array_equal(p[0:n], FeistelPermutation(n, [3, 1])[0:n])
    assert p[n - 1] == int(p[0:n][-1])
    if n >= 64:
        assert not np.array_equal(p[0:n], FeistelPermutation(n, [3, 2])[0:n])
        assert not np.array_equal(p[0:n], np.arange(n))


def test_sampler_at_pile_size_allocates_per_step_not_per_sample():
    n, batch = 146_000_000, 1024  # Pythia's deduplicated Pile: 146M samples of 2049 tokens
    tracemalloc.start()
    try:
        sampler = StepSampler(n, batch, max_steps=143_000, seed=0, shuffle=True, rank=1, world_size=4, start_step=5000)
        it = iter(sampler)
        first = [next(it) for _ in range(3 * batch // 4)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak  # a permutation would be 1.2 GB
    assert len(set(first)) == len(first) and all(0 <= i < n for i in first)
    again = StepSampler(n, batch, max_steps=143_000, seed=0, shuffle=True, rank=1, world_size=4, start_step=5000)
    assert list(next(iter(again)) for _ in range(1)) == first[:1]  # resumable: the same step, the same windows


def test_samples_size_check_is_chunked(monkeypatch):
    import meshctl.data.windows as windows

    monkeypatch.setattr(windows, "CHUNK", 7)
    sizes = np.full(100, 9, dtype=np.int32)
    assert first_other(sizes, 9) is None
    sizes[23] = 4
    assert first_other(sizes, 9) == 23

"""Training windows over an indexed dataset: items of seq_len + 1 tokens (input = [:-1], target = [1:]).

`packed` follows Megatron/GPT-NeoX `GPT2Dataset`: documents (EOD already appended) are read as one token
stream in index order and window i starts at token i * seq_len, so consecutive windows share one token
and the remainder is dropped. `samples` reads Pythia's preshuffled Pile, where every index entry is
already one 2049-token sample (reference/pythia-data-flops.md §4.3).
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from meshctl.data.indexed import IndexedDataset
from meshctl.data.permutation import FeistelPermutation
from meshctl.errors import BadInput


CHUNK = 1 << 20  # entries per pass of the samples check: 4 MB of sizes and 1 MB of flags at a time


def first_other(sizes: np.ndarray, size: int) -> int | None:
    """The first entry whose size differs, scanned in chunks: the Pile's 146M entries never make a temporary."""
    for lo in range(0, len(sizes), CHUNK):
        bad = np.flatnonzero(sizes[lo : lo + CHUNK] != size)
        if bad.size:
            return lo + int(bad[0])
    return None


class TokenWindows(Dataset):
    """`len()` windows of `seq_len + 1` tokens as int64 tensors; `seed` permutes their order (None: index order)."""

    def __init__(
        self,
        dataset: IndexedDataset | str | os.PathLike,
        seq_len: int,
        mode: Literal["packed", "samples"] = "packed",
        seed: int | None = 0,
    ) -> None:
        self.dataset = dataset if isinstance(dataset, IndexedDataset) else IndexedDataset(dataset)
        if seq_len < 1:
            raise BadInput(f"seq_len must be a positive integer, got {seq_len}")
        self.seq_len = seq_len
        self.mode = mode
        self.seed = seed
        if mode == "packed":
            if not self.dataset.is_contiguous():
                raise BadInput(f"{self.dataset.prefix}: sequences are not stored end to end; packed mode needs a contiguous .bin")
            total = self.dataset.num_tokens
            if total < seq_len + 1:
                raise BadInput(
                    f"{self.dataset.prefix}: {total} tokens cannot fill one window of seq_len + 1 = {seq_len + 1}; "
                    "use a shorter seq_len or more data"
                )
            self.num_windows = (total - 1) // seq_len
        elif mode == "samples":
            sizes = self.dataset.sizes
            bad = first_other(sizes, seq_len + 1)
            if bad is not None:
                raise BadInput(
                    f"{self.dataset.prefix}: entry {bad} has {sizes[bad]} tokens, samples mode needs every entry "
                    f"to be seq_len + 1 = {seq_len + 1}; use mode='packed' or the matching seq_len"
                )
            self.num_windows = len(sizes)
        else:
            raise BadInput(f"mode must be 'packed' or 'samples', got {mode!r}")
        # computed per item: no per-window array, whatever the size of the data
        self.order = None if seed is None else FeistelPermutation(self.num_windows, seed)

    def __len__(self) -> int:
        return self.num_windows

    def window_index(self, i: int) -> int:
        """Position in index order of the i-th item."""
        if not -self.num_windows <= i < self.num_windows:
            raise IndexError(f"window {i} out of range for {self.num_windows} windows")
        i %= self.num_windows
        return i if self.order is None else self.order[i]  # type: ignore[return-value]

    def __getitem__(self, i: int) -> torch.Tensor:
        w = self.window_index(i)
        if self.mode == "packed":
            start = w * self.seq_len
            tokens = self.dataset.tokens[start : start + self.seq_len + 1]
        else:
            tokens = self.dataset[w]
        return torch.from_numpy(tokens.astype(np.int64))  # (seq_len + 1,)

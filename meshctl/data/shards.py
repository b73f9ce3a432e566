"""A .bin split into byte-range shards, read as one: Pythia distributes its 600 GB Pile `.bin` as 21 files
whose concatenation is the file (their `utils/unshard_memmap.py` only joins the bytes), so a boundary may
fall inside a sample or inside a 2-byte token. One uint8 memmap per shard plus cumulative byte offsets.
"""

from __future__ import annotations

import bisect
import glob
import os
import re
from pathlib import Path

import numpy as np

from meshctl.errors import BadInput

SHARD = re.compile(r"^(?P<name>.+)-(?P<index>\d+)-of-(?P<of>\d+)\.bin$")


def shard_files(prefix: str | os.PathLike) -> list[Path]:
    """`PREFIX-NNNNN-of-MMMMM.bin` in index order, checked for gaps. Pythia ships its Pile as 21 files named
    `-00000-of-00020` to `-00020-of-00020` (M is the last index); M files `0 .. M-1` are accepted too, and a
    missing last shard of that kind is caught by the byte count against the .idx. [] when there are none."""
    prefix = Path(prefix)
    found: dict[int, Path] = {}
    counts = set()
    for p in prefix.parent.glob(f"{glob.escape(prefix.name)}-*-of-*.bin"):
        m = SHARD.match(p.name)
        if m and m["name"] == prefix.name:
            found[int(m["index"])] = p
            counts.add(int(m["of"]))
    if not found:
        return []
    if len(counts) > 1:
        raise BadInput(f"{prefix}-*-of-*.bin: shards of different sets ({sorted(counts)}); keep one set of shards")
    of = counts.pop()
    gaps = [i for i in range(max(of, max(found) + 1)) if i not in found]
    if gaps:
        width = len(SHARD.match(next(iter(found.values())).name)["index"])  # type: ignore[index]
        missing = prefix.parent / f"{prefix.name}-{gaps[0]:0{width}d}-of-{of:0{width}d}.bin"
        raise BadInput(f"{missing}: shard missing ({len(found)} shards found, -of-{of:0{width}d}); download it again")
    return [found[i] for i in sorted(found)]


def missing_last_shard(bins: list[Path]) -> str:
    """A hint when shards `0 .. M-1` of `-of-M` end short: Pythia's set has one more, `M-of-M`."""
    m = SHARD.match(bins[-1].name) if len(bins) > 1 else None
    if m is None or int(m["index"]) != int(m["of"]) - 1:
        return ""
    return f" (is {m['name']}-{m['of']}-of-{m['of']}.bin missing?)"


class TokenStream:
    """Tokens laid end to end over one or more files (byte-range shards of one .bin), read as one array:
    `stream[a:b]` is a view when the range lies in one file and a copy when it straddles two; `stream[i]` an int.
    Offsets are in tokens from `base` (a byte offset: where this dataset's first entry starts)."""

    def __init__(self, maps: list[np.ndarray], dtype: np.dtype, base: int = 0, end: int | None = None) -> None:
        self.maps, self.dtype = maps, dtype
        self.starts = [0]
        for m in maps:
            self.starts.append(self.starts[-1] + len(m))
        self.base = base
        self.end = self.starts[-1] if end is None else end
        self.length = (self.end - base) // dtype.itemsize

    def __len__(self) -> int:
        return self.length

    def read(self, byte_start: int, count: int) -> np.ndarray:
        """`count` tokens from absolute byte offset `byte_start` (bounds checked by the caller)."""
        if count <= 0:
            return np.empty(0, self.dtype)
        stop = byte_start + count * self.dtype.itemsize
        j = bisect.bisect_right(self.starts, byte_start) - 1  # the last shard starting at or before it
        if stop <= self.starts[j + 1]:
            return self.maps[j][byte_start - self.starts[j] : stop - self.starts[j]].view(self.dtype)
        out = np.empty(stop - byte_start, np.uint8)
        at = byte_start
        while at < stop:  # a token or a sample straddling shard boundaries: gather its bytes
            end = min(stop, self.starts[j + 1])
            out[at - byte_start : end - byte_start] = self.maps[j][at - self.starts[j] : end - self.starts[j]]
            at, j = end, j + 1
        return out.view(self.dtype)

    def __getitem__(self, key: int | slice) -> np.ndarray | int:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.length)
            if step != 1:
                raise ValueError("token streams are sliced with step 1")
            return self.read(self.base + start * self.dtype.itemsize, max(stop - start, 0))
        if not -self.length <= key < self.length:
            raise IndexError(f"token {key} out of range for {self.length} tokens")
        return int(self.read(self.base + (key % self.length) * self.dtype.itemsize, 1)[0])

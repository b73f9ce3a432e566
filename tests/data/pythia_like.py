"""Pythia-shaped test data: 65-token samples (Pythia's are 2049) as one .bin or 21 odd byte-range shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE = 65
# shard ends in bytes: odd numbers split a uint16 token, and none is a multiple of a sample's 130 bytes
CUTS = [1, 131, 1000, 1001, 4097, 9999]


def shard_bounds(size: int, count: int = 21) -> list[int]:
    """`count + 1` byte offsets from 0 to size: the odd CUTS first, the rest spread evenly (and kept odd)."""
    rest = np.linspace(CUTS[-1], size, count - len(CUTS) + 1).astype(int)[1:-1] | 1
    return [0, *CUTS, *rest.tolist(), size]


def write_shards(bin_path: Path, prefix: Path, bounds: list[int]) -> list[Path]:
    data = bin_path.read_bytes()
    last = len(bounds) - 2
    paths = []
    for i in range(len(bounds) - 1):
        p = prefix.parent / f"{prefix.name}-{i:05d}-of-{last:05d}.bin"
        p.write_bytes(data[bounds[i] : bounds[i + 1]])
        paths.append(p)
    return paths

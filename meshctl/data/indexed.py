"""GPT-NeoX / Megatron memory-mapped indexed dataset: a headerless `.bin` of tokens plus an `.idx`.

Byte layout as in gpt-neox `megatron/data/indexed_dataset.py` (`MMapIndexedDataset.Index`), which Pythia
vendors as `utils/mmap_dataset.py`; see reference/pythia-data-flops.md §4.3. All integers little-endian:

    0   9      magic b"MMIDIDX\\x00\\x00"
    9   8  <Q  version == 1
    17  1  <B  dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float32, 7 float64, 8 uint16)
    18  8  <Q  len: number of sequences
    26  8  <Q  doc_count = len(doc_idx)
    34         sizes int32[len], pointers int64[len] (byte offsets into .bin), doc_idx int64[doc_count]

Files written here are read by gpt-neox and Pythia's tools, and Pythia's preshuffled Pile files are read here.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from types import TracebackType

import numpy as np

from meshctl.data.shards import TokenStream, missing_last_shard, shard_files
from meshctl.errors import BadInput

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, len, doc_count: 34 bytes
DTYPES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float32,
    7: np.float64,
    8: np.uint16,
}
DTYPE_CODES = {np.dtype(t): code for code, t in DTYPES.items()}
TMP = ".tmp-"  # temp files are FINAL_NAME.tmp-PID
CHUNK = 1 << 20  # index entries per write when assembling the .idx: bounds memory at close


def best_dtype(vocab_size: int) -> np.dtype:
    """Megatron's `__best_fitting_dtype`: uint16 below 65500 token ids, else int32."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def index_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


def data_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


class IndexedDatasetWriter:
    """Write one `.bin/.idx` pair; each document is one sequence (Megatron's `--append-eod` layout).

    Memory stays flat at any corpus size: tokens go straight to the `.bin`, sequence sizes to a temp file,
    and the `.idx` is assembled from that file in bounded chunks at `close()` (`doc_idx` is 0..n, nothing to
    keep). Files appear under their final names only at a clean `close()` (temp files renamed), so a crash
    never leaves a half-written dataset that looks complete.
    """

    def __init__(self, prefix: str | os.PathLike, vocab_size: int) -> None:
        if vocab_size < 1:
            raise BadInput(f"vocab_size must be positive, got {vocab_size}")
        self.prefix = Path(prefix)
        self.vocab_size = vocab_size
        self.dtype = best_dtype(vocab_size)
        tmp = f"{TMP}{os.getpid()}"
        self._bin_tmp = Path(f"{data_path(prefix)}{tmp}")
        self._idx_tmp = Path(f"{index_path(prefix)}{tmp}")
        self._sizes_tmp = Path(f"{self.prefix}.sizes{tmp}")
        self._bin = open(self._bin_tmp, "wb")
        self._sizes = open(self._sizes_tmp, "wb")
        self.num_documents = 0
        self.num_tokens = 0
        self.closed = False

    def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"a document is a 1-D sequence of token ids, got shape {arr.shape}")
        self.add_documents(arr, np.array([arr.size]))

    def add_documents(self, tokens: np.ndarray, sizes: np.ndarray) -> None:
        """Several documents laid end to end: `tokens` holds `sizes[0]` ids of the first, then the next..."""
        sizes = np.asarray(sizes, dtype=np.int64)
        if tokens.ndim != 1 or int(sizes.sum()) != tokens.size or (sizes < 0).any():
            raise ValueError(f"sizes (sum {int(sizes.sum())}) must split the {tokens.size} tokens into documents")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got [{tokens.min()}, {tokens.max()}]")
        self._bin.write(tokens.astype(self.dtype, copy=False).tobytes(order="C"))
        self._sizes.write(sizes.astype("<i4").tobytes())
        self.num_documents += len(sizes)
        self.num_tokens += int(tokens.size)

    def close(self) -> None:
        """Write the index and move both files into place (the `.idx` last: it is what readers open)."""
        if self.closed:
            return
        self._bin.close()
        self._sizes.close()
        n = self.num_documents
        sizes = np.memmap(self._sizes_tmp, dtype="<i4", mode="r", shape=(n,)) if n else np.empty(0, "<i4")
        with open(self._idx_tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, DTYPE_CODES[self.dtype], n, n + 1))
            for i in range(0, n, CHUNK):
                f.write(sizes[i : i + CHUNK].tobytes())
            offset = 0  # byte offset of the next sequence in the .bin
            for i in range(0, n, CHUNK):
                ends = np.cumsum(sizes[i : i + CHUNK], dtype=np.int64) * self.dtype.itemsize + offset
                f.write(np.concatenate(([offset], ends[:-1])).astype("<i8").tobytes())
                offset = int(ends[-1])
            for i in range(0, n + 1, CHUNK):
                f.write(np.arange(i, min(i + CHUNK, n + 1), dtype="<i8").tobytes())
        del sizes
        os.replace(self._bin_tmp, data_path(self.prefix))
        os.replace(self._idx_tmp, index_path(self.prefix))
        self._sizes_tmp.unlink()
        self.closed = True

    def abort(self) -> None:
        """Drop the temp files; nothing under the final names is touched."""
        self._bin.close()
        self._sizes.close()
        for p in (self._bin_tmp, self._idx_tmp, self._sizes_tmp):
            p.unlink(missing_ok=True)
        self.closed = True

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def remove_temp_files(prefix: str | os.PathLike) -> None:
    """Drop what a killed writer of `prefix` left behind (its temp files carry the dead process's id)."""
    prefix = Path(prefix)
    for p in prefix.parent.glob(f"{prefix.name}.*{TMP}*"):
        p.unlink(missing_ok=True)


class IndexedDataset:
    """Read-only view of a `.bin/.idx` pair through np.memmap: nothing is loaded until indexed.

    `shards`: files whose bytes, concatenated, are the .bin (boundaries anywhere, even inside a token);
    default `prefix.bin`, else `prefix-*-of-*.bin`. `entries=(start, stop)` restricts the view to those
    index entries (a split of an imported file). `ds[i]` is entry i as a 1-D array of `ds.dtype` (a view
    into the memmap unless it straddles shards); `ds.tokens[a:b]` reads the entries' tokens as one stream.
    `sizes`/`pointers` cover the entries; `doc_idx` is the whole file's.
    """

    def __init__(
        self, prefix: str | os.PathLike, shards: Sequence[str | os.PathLike] | None = None,
        entries: tuple[int, int] | None = None,
    ) -> None:
        self.prefix = Path(prefix)
        self.shards = [Path(s) for s in shards] if shards is not None else None
        self.entries = tuple(entries) if entries is not None else None
        self._open()

    def bin_files(self) -> list[Path]:
        if self.shards is not None:
            return self.shards
        bin_ = data_path(self.prefix)
        return [bin_] if bin_.is_file() or not shard_files(self.prefix) else shard_files(self.prefix)

    def _open(self) -> None:
        idx, bins = index_path(self.prefix), self.bin_files()
        for p in (idx, *bins):
            if not p.is_file():
                raise BadInput(f"{p}: file not found; give the dataset prefix (path without .bin/.idx) or run `meshctl data prepare`")
        idx_bytes = idx.stat().st_size
        with open(idx, "rb") as f:
            head = f.read(HEADER.size)
        if len(head) < HEADER.size or head[:9] != MAGIC:
            raise BadInput(f"{idx}: not a GPT-NeoX/Megatron MMIDIDX index (bad magic); re-run `meshctl data prepare`")
        _, version, code, n, doc_count = HEADER.unpack(head)
        if version != VERSION:
            raise BadInput(f"{idx}: index version {version} is not supported (only {VERSION})")
        if code not in DTYPES:
            raise BadInput(f"{idx}: unknown dtype code {code} (known: {sorted(DTYPES)})")
        expected_idx = HEADER.size + 12 * n + 8 * doc_count
        if idx_bytes < expected_idx:
            raise BadInput(f"{idx}: truncated index ({idx_bytes} bytes, header says {expected_idx}); re-run `meshctl data prepare`")
        self.dtype = np.dtype(DTYPES[code])
        sizes = np.memmap(idx, dtype="<i4", mode="r", offset=HEADER.size, shape=(n,)) if n else np.empty(0, "<i4")
        pointers = np.memmap(idx, dtype="<i8", mode="r", offset=HEADER.size + 4 * n, shape=(n,)) if n else np.empty(0, "<i8")
        self.doc_idx = (np.memmap(idx, dtype="<i8", mode="r", offset=HEADER.size + 12 * n, shape=(doc_count,))
                        if doc_count else np.empty(0, "<i8"))
        self.index_entries = n
        self.needed_bytes = int(pointers[-1]) + int(sizes[-1]) * self.dtype.itemsize if n else 0
        # an empty file cannot be mapped; an empty array reads the same
        maps = [np.memmap(p, dtype=np.uint8, mode="r") if p.stat().st_size else np.empty(0, np.uint8) for p in bins]
        self.bin_bytes = sum(len(m) for m in maps)
        if self.bin_bytes < self.needed_bytes:
            what = "truncated (" + (f"{len(bins)} shards hold " if len(bins) > 1 else "") + f"{self.bin_bytes} bytes"
            raise BadInput(f"{bins[-1]}: {what}, the index needs {self.needed_bytes}){missing_last_shard(bins)}; "
                           "a file is missing or cut short: download or prepare it again")
        start, stop = self.entries if self.entries is not None else (0, n)
        if not 0 <= start <= stop <= n:
            raise BadInput(f"{idx}: entries [{start}, {stop}) out of range for {n} entries; import the data again")
        self.sizes, self.pointers = sizes[start:stop], pointers[start:stop]
        if self.entries is None:
            self.tokens = TokenStream(maps, self.dtype)
        elif start == stop:
            self.tokens = TokenStream(maps, self.dtype, 0, 0)
        else:
            base = int(self.pointers[0])
            self.tokens = TokenStream(maps, self.dtype, base, int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self.sizes)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences")
        i %= n
        return self.tokens.read(int(self.pointers[i]), int(self.sizes[i]))

    @cached_property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    @property
    def num_documents(self) -> int:
        """Documents whose entries all lie in this view (doc_idx holds each document's first entry)."""
        if len(self.doc_idx) < 2:
            return 0
        start, stop = self.entries if self.entries is not None else (0, self.index_entries)
        first = int(np.searchsorted(self.doc_idx, start, side="left"))
        last = int(np.searchsorted(self.doc_idx, stop, side="right")) - 1
        return max(last - first, 0)

    def is_contiguous(self) -> bool:
        """Sequences laid end to end in index order (always true for Megatron/meshctl writers)."""
        n = len(self.sizes)
        if n == 0:
            return True
        # cheap check on the ends; a full scan of the pointers of the Pile would read gigabytes
        last = (self.num_tokens - int(self.sizes[-1])) * self.dtype.itemsize
        return int(self.pointers[0]) == self.tokens.base and int(self.pointers[-1]) == self.tokens.base + last

    def check(self, exact: bool = True, sample: int = 4096) -> None:
        """BadInput unless the index agrees with itself and the .bin on a bounded sample: pointers step by
        sizes * itemsize over the first, last and `sample` random entries, the last pointer matches the sum of
        all sizes, doc_idx runs from 0 to at most the entry count, and (`exact`) the .bin has no extra bytes."""
        idx, n, item = index_path(self.prefix), self.index_entries, self.dtype.itemsize
        full = IndexedDataset(self.prefix, self.bin_files()) if self.entries is not None else self
        sizes, pointers = full.sizes, full.pointers
        if n:
            rng = np.random.default_rng(0)
            at = np.unique(np.concatenate([np.arange(min(sample, n - 1)), np.arange(max(n - 1 - sample, 0), n - 1),
                                           rng.integers(0, max(n - 1, 1), size=min(sample, n - 1))]))
            steps = np.asarray(pointers[at + 1]) - np.asarray(pointers[at])
            bad = np.flatnonzero(steps != np.asarray(sizes[at], dtype=np.int64) * item)
            if int(pointers[0]) != 0 or bad.size or int(sizes[-1]) < 0:
                i = int(at[bad[0]]) if bad.size else 0
                raise BadInput(f"{idx}: pointers disagree with sizes at entry {i} (an .idx from another .bin?); "
                               "use the .idx that came with the data")
            if full.needed_bytes != full.num_tokens * item:
                raise BadInput(f"{idx}: sizes sum to {full.num_tokens} tokens but the last pointer ends at byte "
                               f"{full.needed_bytes}; use the .idx that came with the data")
        if len(self.doc_idx) and (int(self.doc_idx[0]) != 0 or not 0 <= int(self.doc_idx[-1]) <= n
                                  or np.any(np.diff(self.doc_idx[:sample]) < 0) or np.any(np.diff(self.doc_idx[-sample:]) < 0)):
            raise BadInput(f"{idx}: doc_idx runs {int(self.doc_idx[0])}..{int(self.doc_idx[-1])}, not within the "
                           f"{n} entries; use the .idx that came with the data")
        if exact and self.bin_bytes != self.needed_bytes:
            bins = self.bin_files()
            held = f"{len(bins)} shards hold" if len(bins) > 1 else "holds"
            raise BadInput(f"{bins[-1]}: {held} {self.bin_bytes} bytes, the index needs exactly "
                           f"{self.needed_bytes}; the .bin and .idx are not a pair")

    # memmaps pickle as full copies: DataLoader workers reopen the files instead
    def __getstate__(self) -> dict:
        return {"prefix": self.prefix, "shards": self.shards, "entries": self.entries}

    def __setstate__(self, state: dict) -> None:
        self.prefix, self.shards, self.entries = state["prefix"], state.get("shards"), state.get("entries")
        self._open()

    def __repr__(self) -> str:
        return f"IndexedDataset({str(self.prefix)!r}, sequences={len(self)}, dtype={self.dtype.name})"

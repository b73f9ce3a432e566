"""The corpus as a stream of blocks of documents, each with its seeded train/validation split.

The document count is unknown until the sources run dry, so the split is decided per block of BLOCK
documents in source order. Block k holds out round((k+1)·B·f) - round(k·B·f) documents (the running target
round(n·f) is met at every block boundary, so tiny fractions still hold some out), chosen by a generator
seeded with (seed, k). The last block, seen through a one-document lookahead, tops the total up to exactly
the rule of small corpora: max(1, round(n·f)) documents, never all n, so a positive fraction never ends with
an empty validation split; a single document with a positive fraction is refused. Block 0 draws from
default_rng(seed), as prepare did before it streamed, so corpora of up to BLOCK documents keep their split.

Only one block of text is held at a time; BLOCK is part of the output (changing it moves documents).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from meshctl.data.manifest import SourceRecord
from meshctl.data.sources import Source
from meshctl.errors import BadInput

BLOCK = 1024


@dataclass
class Block:
    index: int
    docs: list[str]
    held_out: np.ndarray  # bool per document: True goes to validation
    bytes_read: int  # of the source files, when the block was complete


def validation_count(n: int, val_fraction: float) -> int:
    """Held-out documents of a whole corpus: round(n·f), at least one when f > 0, never all."""
    if val_fraction == 0:
        return 0
    if n < 2:
        raise BadInput(f"{n} document cannot be split into train and validation; add documents or pass --val-fraction 0")
    return min(max(1, round(n * val_fraction)), n - 1)


def held_out(block: int, size: int, total: int, last: bool, val_fraction: float, seed: int) -> np.ndarray:
    """The mask of block `block` (`size` documents, `total` read so far including them)."""
    mask = np.zeros(size, dtype=bool)
    if val_fraction == 0:
        return mask
    target = validation_count(total, val_fraction) if last else round(total * val_fraction)
    k = min(max(target - round((total - size) * val_fraction), 0), size)
    rng = np.random.default_rng(seed if block == 0 else [seed, block])
    mask[rng.choice(size, size=k, replace=False)] = True
    return mask


class Corpus:
    """Sources read in order up to max_documents; `blocks()` may be iterated again (BPE's first pass).

    After a full pass, `records` holds each source's document count and `bytes_read` the bytes of files read.
    """

    def __init__(self, sources: list[Source], max_documents: int | None, val_fraction: float, seed: int) -> None:
        self.sources = sources
        self.limit = max_documents if max_documents is not None else float("inf")
        self.val_fraction = val_fraction
        self.seed = seed
        self.records: list[SourceRecord] = []
        self.bytes_read = 0

    @property
    def total_bytes(self) -> int | None:
        """What `bytes_read` reaches at the end (None when an hf: stream has no known size)."""
        sizes = [s.size() for s in self.sources]
        return None if None in sizes or self.limit != float("inf") else sum(sizes)  # type: ignore[arg-type]

    def blocks(self) -> Iterator[Block]:
        docs = self._documents()
        pending = next(docs, None)
        index = total = 0
        while pending is not None:
            block = [pending]
            for doc in docs:
                block.append(doc)
                if len(block) == BLOCK:
                    break
            pending = next(docs, None)  # the lookahead: is this block the last?
            total += len(block)
            mask = held_out(index, len(block), total, pending is None, self.val_fraction, self.seed)
            yield Block(index, block, mask, self.bytes_read)
            index += 1
        if total == 0:
            raise BadInput("the sources hold no non-empty documents")

    def _documents(self) -> Iterator[str]:
        self.records, self.bytes_read, count = [], 0, 0

        def read(n: int) -> None:
            self.bytes_read += n

        for source in self.sources:
            got = 0
            if count < self.limit:
                for doc in source.documents(read):
                    got += 1
                    count += 1
                    yield doc
                    if count >= self.limit:
                        break
            self.records.append(SourceRecord(spec=source.spec, kind=source.kind, documents=got))

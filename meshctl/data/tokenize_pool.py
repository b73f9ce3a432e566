"""Tokenize blocks of documents across worker processes, results in submission order.

The order of results is the order of blocks whatever the number of workers, so the output is the same for
any --workers. At most 2 blocks per worker are in flight, which bounds memory (Executor.map would read the
whole corpus ahead). Workers are spawned (not forked: the parent may hold rayon and rich threads) and run
tokenizers single-threaded, so N processes use N cores rather than N x cores threads. One worker tokenizes
in this process instead, with tokenizers' own encode_batch parallelism (RAYON_NUM_THREADS bounds it).
Spawned workers need the usual `if __name__ == "__main__":` guard in a script that calls prepare().
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain
from multiprocessing import get_context
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")
IN_FLIGHT_PER_WORKER = 2

_worker: tuple[object, int, np.dtype] | None = None  # (tokenizer, eod, dtype) of this worker process


def default_workers() -> int:
    """The CPUs this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def encode(tok, docs: list[str], eod: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `docs` laid end to end, each followed by `eod`, and the per-document sizes."""
    ids = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    sizes = np.fromiter((len(i) + 1 for i in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(chain(i, (eod,)) for i in ids), dtype=dtype, count=int(sizes.sum()))
    return flat, sizes


def _init_worker(tokenizer_path: str, eod: int, dtype: str, parent: int) -> None:
    global _worker
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # encode_batch runs serially: this process is one core
    from tokenizers import Tokenizer

    _worker = (Tokenizer.from_file(tokenizer_path), eod, np.dtype(dtype))
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    # a SIGKILLed prepare cannot shut its pool down; its workers would wait on the queue forever
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _encode_in_worker(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _worker is not None
    tok, eod, dtype = _worker
    return encode(tok, docs, eod, dtype)


class TokenizePool:
    """`map` tokenizes blocks in order; the worker processes start only once a second block arrives, so a
    corpus of one block (and every --workers 1 run) never pays for spawning them."""

    def __init__(self, tokenizer_path: Path, eod: int, dtype: np.dtype, workers: int) -> None:
        self.tokenizer_path, self.eod, self.dtype, self.workers = tokenizer_path, eod, dtype, workers
        self._executor: ProcessPoolExecutor | None = None

    def map(self, items: Iterable[tuple[list[str], T]]) -> Iterator[tuple[T, np.ndarray, np.ndarray]]:
        """(docs, tag) -> (tag, tokens, sizes), in the order given."""
        items = iter(items)
        first = next(items, None)
        second = next(items, None) if self.workers > 1 and first is not None else None
        if second is None:
            from meshctl.data.tokenizer import load_tokenizer

            tok = load_tokenizer(self.tokenizer_path)
            for docs, tag in chain([first] if first else [], items):
                yield (tag, *encode(tok, docs, self.eod, self.dtype))
            return
        self._executor = ProcessPoolExecutor(
            self.workers, mp_context=get_context("spawn"), initializer=_init_worker,
            initargs=(str(self.tokenizer_path), self.eod, self.dtype.str, os.getpid()),
        )
        pending: deque[tuple[T, Future]] = deque()
        for docs, tag in chain([first, second], items):
            pending.append((tag, self._executor.submit(_encode_in_worker, docs)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * self.workers:
                tag0, future = pending.popleft()
                yield (tag0, *future.result())
        while pending:
            tag0, future = pending.popleft()
            yield (tag0, *future.result())

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> TokenizePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

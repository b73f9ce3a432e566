"""`prepare`: text sources -> tokenizer -> train/validation GPT-NeoX indexed datasets + manifest.json.

The corpus streams through in blocks (meshctl/data/corpus.py), so memory does not grow with its size: each
block is split by document (seeded; no validation text is ever seen in training, including by the BPE,
which trains on the training split only in a first pass over the sources), tokenized across --workers
processes (meshctl/data/tokenize_pool.py) and appended to both splits in source order. Every document ends
with the tokenizer's EOD token, as GPT-NeoX's `preprocess_data.py --append-eod` does.

An interrupted prepare leaves no manifest.json (removed first, written last), so the directory reads as
incomplete; running prepare again starts clean, removing the dead run's temp files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from meshctl.data import tokenizer as tk
from meshctl.data.corpus import Corpus
from meshctl.data.indexed import TMP, IndexedDatasetWriter, best_dtype, remove_temp_files
from meshctl.data.manifest import (
    MANIFEST,
    SPLITS,
    Manifest,
    PrepareSettings,
    SplitRecord,
    TokenizerRecord,
    write_manifest,
)
from meshctl.data.progress import PrepareProgress
from meshctl.data.sources import resolve_sources
from meshctl.data.tokenize_pool import TokenizePool, default_workers
from meshctl.errors import BadInput


def prepare(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    val_fraction: float = 0.01,
    seed: int = 0,
    max_documents: int | None = None,
    text_field: str = "text",
    force: bool = False,
    progress: bool | None = None,
    workers: int | None = None,
) -> Manifest:
    """Prepare `out_dir`; `tokenizer` is `bpe` (train one), `neox`, or a tokenizer.json path.

    `workers` tokenizer processes (None: the CPUs this process may use); the output does not depend on it.
    `progress=None` shows a progress bar only when stderr is a terminal.
    """
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise BadInput(f"--workers must be a positive integer, got {workers}")
    if not 0 <= val_fraction < 1:
        raise BadInput(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if max_documents is not None and max_documents < 1:
        raise BadInput(f"--max-documents must be a positive integer, got {max_documents}")
    resolved = resolve_sources(sources, text_field)
    tok_file = tk.tokenizer_file(tokenizer)
    if tok_file is None and vocab_size < 512:
        raise BadInput(f"--vocab-size {vocab_size} is too small for a byte-level BPE; use 512 or more")
    settings = PrepareSettings(
        sources=[os.fspath(s) for s in sources],
        tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction, max_documents=max_documents, text_field=text_field
    )
    out = Path(out_dir)
    claim_directory(out, settings, seed, force)

    corpus = Corpus(resolved, max_documents, val_fraction, seed)
    show = sys.stderr.isatty() if progress is None else progress
    with PrepareProgress(show) as bar:
        tok_path = out / "tokenizer.json"
        if tok_file is None:
            bar.phase("reading for the BPE", corpus.total_bytes)
            tmp = tok_path.with_name(f"tokenizer.json{TMP}{os.getpid()}")
            tk.train_bpe(training_text(corpus, bar), vocab_size).save(str(tmp))
            os.replace(tmp, tok_path)
        elif tok_file.resolve() != tok_path.resolve():
            shutil.copyfile(tok_file, tok_path)
        tok = tk.load_tokenizer(tok_path)  # encode with exactly what was saved
        eod = tk.eod_token_id(tok, str(tok_file or "trained BPE"))
        vocab = tk.vocab_size(tok)
        del tok
        bar.phase("tokenizing", corpus.total_bytes)
        written = write_splits(out, corpus, tok_path, eod, vocab, workers, bar)

    manifest = Manifest(
        sources=corpus.records,
        tokenizer=TokenizerRecord(
            kind=tk.tokenizer_kind(tokenizer), sha256=tk.sha256_file(tok_path), vocab_size=vocab, eod_token_id=eod
        ),
        splits={name: SplitRecord(prefix=name, documents=n, tokens=t) for name, (n, t) in written.items()},
        seed=seed,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings=settings,
    )
    write_manifest(out, manifest)
    return manifest


def claim_directory(out: Path, settings: PrepareSettings, seed: int, force: bool) -> None:
    """Refuse to replace a different prepared dataset unless forced; then drop the old manifest first,
    so an interrupted prepare leaves a directory that `load_manifest` calls incomplete, and what a killed
    prepare left behind (a clean restart)."""
    path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: exists and is not a directory")
    if path.is_file() and not force:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            same = old.get("settings") == settings.model_dump() and old.get("seed") == seed
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            raise BadInput(f"--out {out}: holds a different prepared dataset; pass --force to replace it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    for name in (*SPLITS, "tokenizer", "manifest"):
        remove_temp_files(out / name)


def training_text(corpus: Corpus, bar: PrepareProgress):
    """The training split's documents, streamed (the BPE's pass)."""
    for block in corpus.blocks():
        yield from (doc for doc, held in zip(block.docs, block.held_out) if not held)
        bar.advance(block.bytes_read, len(block.docs))


def write_splits(out: Path, corpus: Corpus, tok_path: Path, eod: int, vocab: int, workers: int,
                 bar: PrepareProgress) -> dict[str, tuple[int, int]]:
    """Tokenize the corpus once, appending each block's documents to train or validation in source order."""
    with (
        IndexedDatasetWriter(out / "train", vocab) as train,
        IndexedDatasetWriter(out / "validation", vocab) as val,
        TokenizePool(tok_path, eod, best_dtype(vocab), workers) as pool,
    ):
        blocks = ((b.docs, (b.held_out, b.bytes_read)) for b in corpus.blocks())
        for (held, bytes_read), tokens, sizes in pool.map(blocks):
            per_token = np.repeat(held, sizes)
            train.add_documents(tokens[~per_token], sizes[~held])
            val.add_documents(tokens[per_token], sizes[held])
            bar.advance(bytes_read, len(sizes), len(tokens))
    return {"train": (train.num_documents, train.num_tokens), "validation": (val.num_documents, val.num_tokens)}

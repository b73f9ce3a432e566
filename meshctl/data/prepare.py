"""`prepare`: text sources -> tokenizer -> train/validation GPT-NeoX indexed datasets + manifest.json.

The split is by document (a seeded choice of held-out documents), so no validation text is ever seen in
training, including by the BPE, which trains on the training split only. Every document ends with the
tokenizer's EOD token, as GPT-NeoX's `preprocess_data.py --append-eod` does. The corpus text is held in
memory: prepare is meant for corpora of tens of MB (the Pile arrives pre-tokenized from Pythia).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from meshctl.data import tokenizer as tk
from meshctl.data.indexed import IndexedDatasetWriter
from meshctl.data.manifest import (
    MANIFEST,
    Manifest,
    PrepareSettings,
    SourceRecord,
    SplitRecord,
    TokenizerRecord,
    write_manifest,
)
from meshctl.data.sources import Source, resolve_sources
from meshctl.errors import BadInput

CHUNK = 1024  # documents per encode_batch call: enough to keep every rayon thread busy


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
) -> Manifest:
    """Prepare `out_dir`; `tokenizer` is `bpe` (train one), `neox`, or a tokenizer.json path.

    `progress=None` shows a progress bar only when stderr is a terminal.
    """
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

    show = sys.stderr.isatty() if progress is None else progress
    with progress_bar(show) as bar:
        docs, records = read_documents(resolved, max_documents)
        held_out = validation_mask(len(docs), val_fraction, seed)
        splits = {
            "train": [d for d, v in zip(docs, held_out) if not v],
            "validation": [d for d, v in zip(docs, held_out) if v],
        }
        del docs

        tok_path = out / "tokenizer.json"
        if tok_file is None:
            step(bar, "training BPE")
            tmp = tok_path.with_name(f"tokenizer.json.tmp-{os.getpid()}")
            tk.train_bpe(splits["train"], vocab_size).save(str(tmp))
            os.replace(tmp, tok_path)
        elif tok_file.resolve() != tok_path.resolve():
            shutil.copyfile(tok_file, tok_path)
        tok = tk.load_tokenizer(tok_path)  # encode with exactly what was saved
        eod = tk.eod_token_id(tok, str(tok_file or "trained BPE"))
        vocab = tk.vocab_size(tok)

        written = {}
        for name, split_docs in splits.items():
            update = step(bar, f"tokenizing {name}", len(split_docs))
            written[name] = write_split(out / name, split_docs, tok, eod, vocab, update)

    manifest = Manifest(
        sources=records,
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
    so an interrupted prepare leaves a directory that `load_manifest` calls incomplete."""
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


def read_documents(sources: list[Source], max_documents: int | None) -> tuple[list[str], list[SourceRecord]]:
    """All documents in source order, stopping at max_documents (later sources then count 0)."""
    limit = max_documents if max_documents is not None else float("inf")
    docs: list[str] = []
    records = []
    for source in sources:
        start = len(docs)
        if len(docs) < limit:
            for doc in source.documents():
                docs.append(doc)
                if len(docs) >= limit:
                    break
        records.append(SourceRecord(spec=source.spec, kind=source.kind, documents=len(docs) - start))
    if not docs:
        raise BadInput("the sources hold no non-empty documents")
    return docs, records


def validation_mask(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Held-out documents: round(n * fraction), at least one when the fraction is positive, never all."""
    mask = np.zeros(n, dtype=bool)
    if val_fraction == 0:
        return mask
    if n < 2:
        raise BadInput(f"{n} document cannot be split into train and validation; add documents or pass --val-fraction 0")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    mask[np.random.default_rng(seed).choice(n, size=n_val, replace=False)] = True
    return mask


def write_split(prefix: Path, docs: list[str], tok, eod: int, vocab: int, update: Callable[[int], None]) -> tuple[int, int]:
    with IndexedDatasetWriter(prefix, vocab) as writer:
        for i in range(0, len(docs), CHUNK):
            chunk = docs[i : i + CHUNK]
            for enc in tok.encode_batch(chunk, add_special_tokens=False):
                ids = np.empty(len(enc.ids) + 1, dtype=np.int64)
                ids[:-1] = enc.ids
                ids[-1] = eod
                writer.add_document(ids)
            update(len(chunk))
        return len(docs), writer.num_tokens


def progress_bar(show: bool):
    """A rich progress bar on stderr (stdout stays clean for --format json), or nothing."""
    if not show:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    )


def step(bar, description: str, total: int | None = None) -> Callable[[int], None]:
    if bar is None:
        return lambda n: None
    task = bar.add_task(description, total=total)
    return lambda n: bar.advance(task, n)

"""`import`: register an existing GPT-NeoX .bin/.idx (Pythia's preshuffled Pile) as a data directory, in place.

Nothing is copied but the tokenizer.json: the manifest names the .idx prefix and the .bin's files, by path
relative to --out when they lie inside it and absolute otherwise, so the data must stay where it was (the
directory itself may move). Both layouts are read: one `document.bin`, or Pythia's byte-range shards
`document-00000-of-00020.bin` .. `document-00020-of-00020.bin`. Every check runs before --out is touched,
so a refused import leaves no manifest.json behind.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from meshctl.data import tokenizer as tk
from meshctl.data.indexed import IndexedDataset, data_path, index_path
from meshctl.data.manifest import (
    ImportSettings,
    Manifest,
    ShardRecord,
    SourceRecord,
    SplitRecord,
    TokenizerRecord,
    load_manifest,
    write_manifest,
)
from meshctl.data.prepare import claim_directory
from meshctl.data.shards import SHARD, shard_files
from meshctl.errors import BadInput

VOCAB_SAMPLE = 1 << 20  # tokens read at each end of the data to check ids against the tokenizer


def import_data(
    input: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str = "neox",
    validation: str | None = None,
    val_samples: int | None = None,
    force: bool = False,
) -> Manifest:
    """Register `input` (a prefix, its .idx, or one of its shards) as `out_dir`'s train split; validation is
    the last `val_samples` index entries (train then stops before them) or another directory's DIR[:SPLIT]."""
    if (validation is None) == (val_samples is None):
        raise BadInput("give --val-samples N (hold out the last N samples) or --validation DIR[:SPLIT], one of them")
    if val_samples is not None and val_samples < 1:
        raise BadInput(f"--val-samples must be a positive integer, got {val_samples}")
    if tokenizer == "bpe":
        raise BadInput("--tokenizer: the data is already tokenized; give neox or the tokenizer.json it was made with")
    out = Path(out_dir).absolute()
    prefix, bins = find_data(input)
    data = IndexedDataset(prefix, bins)
    data.check(exact=True)
    tok_file = tk.tokenizer_file(tokenizer)
    tok = tk.load_tokenizer(tok_file)  # type: ignore[arg-type]
    eod, vocab = tk.eod_token_id(tok, str(tok_file)), tk.vocab_size(tok)
    check_vocab(data, vocab, tok_file)  # type: ignore[arg-type]
    sha = tk.sha256_file(tok_file)  # type: ignore[arg-type]

    shards = [ShardRecord(path=stored_path(p, out), bytes=p.stat().st_size) for p in bins]
    n = len(data)
    if val_samples is not None:
        if val_samples >= n:
            raise BadInput(f"--val-samples {val_samples}: {index_path(prefix)} holds only {n} samples; hold out fewer")
        ranges = {"train": (0, n - val_samples), "validation": (n - val_samples, n)}
        splits = {name: record(prefix, out, shards, bins, r) for name, r in ranges.items()}
    else:
        splits = {"train": record(prefix, out, shards, bins, (0, n)), "validation": borrowed_split(validation, sha)}  # type: ignore[arg-type]

    settings = ImportSettings(input=str(prefix), tokenizer=tokenizer, validation=validation, val_samples=val_samples)
    claim_directory(out, settings, 0, force)  # type: ignore[arg-type]
    tok_path = out / "tokenizer.json"
    if tok_file.resolve() != tok_path.resolve():  # type: ignore[union-attr]
        tmp = tok_path.with_name(f"tokenizer.json.tmp-{os.getpid()}")
        shutil.copyfile(tok_file, tmp)  # type: ignore[arg-type]
        os.replace(tmp, tok_path)
    manifest = Manifest(
        sources=[SourceRecord(spec=os.fspath(input), kind="neox-bin", documents=data.num_documents)],
        tokenizer=TokenizerRecord(kind=tk.tokenizer_kind(tokenizer), sha256=sha, vocab_size=vocab, eod_token_id=eod),
        splits=splits,
        seed=0,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings=settings,
    )
    write_manifest(out, manifest)
    return manifest


def find_data(spec: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(prefix, .bin files) for a prefix, PREFIX.idx, PREFIX.bin or a shard PREFIX-NNNNN-of-MMMMM.bin; the
    unsharded PREFIX.bin wins when both layouts are there."""
    path = Path(spec).expanduser().absolute()
    shard = SHARD.match(path.name)
    if shard:
        prefix = path.parent / shard["name"]
    elif path.suffix in (".idx", ".bin"):
        prefix = path.with_suffix("")
    else:
        prefix = path
    idx = index_path(prefix)
    if not idx.is_file():
        raise BadInput(f"{idx}: file not found; give the data's prefix (PATH/document for document.idx) or its .idx")
    if data_path(prefix).is_file():
        return prefix, [data_path(prefix)]
    bins = shard_files(prefix)
    if not bins:
        raise BadInput(f"{data_path(prefix)}: file not found, nor shards {prefix.name}-NNNNN-of-MMMMM.bin next to {idx.name}")
    return prefix, bins


def check_vocab(data: IndexedDataset, vocab: int, tok_file: Path) -> None:
    """Token ids at both ends of the data below the tokenizer's vocabulary: a wrong tokenizer shows at once."""
    if data.dtype.kind not in "iu":
        raise BadInput(f"{index_path(data.prefix)}: tokens of dtype {data.dtype.name}, not integer ids; use a token .idx")
    n = len(data.tokens)
    for lo in sorted({0, max(n - VOCAB_SAMPLE, 0)}):
        ids = data.tokens[lo : lo + VOCAB_SAMPLE]
        if len(ids) and (int(ids.max()) >= vocab or int(ids.min()) < 0):
            raise BadInput(f"--tokenizer {tok_file}: vocabulary of {vocab} ids, but the data holds id {int(ids.max())}; "
                           "give the tokenizer the data was made with")


def stored_path(path: Path, out: Path) -> str:
    """Relative to --out when inside it (the directory then moves as one), else absolute."""
    try:
        return str(path.absolute().relative_to(out))
    except ValueError:
        return str(path.absolute())


def record(prefix: Path, out: Path, shards: list[ShardRecord], bins: list[Path], entries: tuple[int, int]) -> SplitRecord:
    part = IndexedDataset(prefix, bins, entries)
    return SplitRecord(prefix=stored_path(prefix, out), documents=part.num_documents, tokens=part.num_tokens,
                       shards=shards, entries=entries)


def borrowed_split(spec: str, sha256: str) -> SplitRecord:
    """Another data directory's split (DIR or DIR:SPLIT, default validation), its paths made absolute."""
    directory, split = spec, "validation"
    if not Path(spec).is_dir() and ":" in spec:
        directory, split = spec.rsplit(":", 1)
    root = Path(directory).expanduser().absolute()
    try:
        other = load_manifest(root)
        rec = other.split(split)
    except BadInput as exc:
        raise BadInput(f"--validation {spec}: {exc}") from None
    if other.tokenizer.sha256 != sha256:
        raise BadInput(f"--validation {spec}: tokenized with another tokenizer than --tokenizer; "
                       "prepare it with the same tokenizer.json")
    shards = None if rec.shards is None else [s.model_copy(update={"path": str(root / s.path)}) for s in rec.shards]
    return rec.model_copy(update={"prefix": str(root / rec.prefix), "shards": shards, "origin": f"{root}:{split}"})

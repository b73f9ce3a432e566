"""`manifest.json`: what a prepared data directory holds. Written last, so its presence means complete.

    {"format": 1, "sources": [...], "tokenizer": {"kind", "path", "sha256", "vocab_size", "eod_token_id"},
     "splits": {"train": {"prefix", "documents", "tokens"}, "validation": {...}}, "seed", "created", "settings"}

Paths inside are relative to the directory, so a prepared directory can be moved or copied to a cluster.
An imported directory (`meshctl data import`) registers a .bin/.idx elsewhere in place: its splits name the
.idx prefix and the .bin's shards by absolute path when they lie outside the directory (moving the directory
then keeps working, moving the data does not), and each split is a range of the index's entries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meshctl.data.indexed import IndexedDataset
from meshctl.errors import BadInput

MANIFEST = "manifest.json"
SPLITS = ("train", "validation")


class SourceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str = Field(description="The source as given: a path, demo:wiki, demo:kjv, hf:NAME.")
    kind: str = Field(description="text, jsonl, demo-wiki, demo-kjv, demo-kjv-books or hf.")
    documents: int = Field(ge=0, description="Non-empty documents read from it (after --max-documents).")


class TokenizerRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["bpe", "neox", "file"] = Field(description="Trained here, GPT-NeoX-20B, or a given file.")
    path: str = Field("tokenizer.json", description="Relative to the prepared directory.")
    sha256: str = Field(description="Of the tokenizer file in the prepared directory.")
    vocab_size: int = Field(gt=0, description="get_vocab_size(with_added_tokens=True): ids the model must embed.")
    eod_token_id: int = Field(ge=0, description="Appended after every document.")


class ShardRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="Relative to the directory, or absolute for data outside it.")
    bytes: int = Field(ge=0, description="File size: the shards' bytes concatenated are the .bin.")


class SplitRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefix: str = Field(description="Path of the .idx (and .bin) without suffix, relative to the directory or absolute.")
    documents: int = Field(ge=0)
    tokens: int = Field(ge=0, description="Including one EOD per document.")
    shards: list[ShardRecord] | None = Field(None, description="The .bin as byte-range files, in order; None: PREFIX.bin.")
    entries: tuple[int, int] | None = Field(None, description="Index entries [start, stop) this split reads; None: all.")
    origin: str | None = Field(None, description="DIR:SPLIT when the split is another directory's (import --validation).")

    def dataset(self, directory: str | os.PathLike) -> IndexedDataset:
        root = Path(directory)
        shards = None if self.shards is None else [root / s.path for s in self.shards]
        return IndexedDataset(root / self.prefix, shards, self.entries)


class ImportSettings(BaseModel):
    """The request that registered existing .bin/.idx data; a second import with other settings needs --force."""

    model_config = ConfigDict(extra="forbid")
    input: str = Field(description="The absolute .idx prefix the input (a prefix, .idx or shard) names.")
    tokenizer: str = Field(description="neox, or the tokenizer path as given.")
    validation: str | None = Field(description="DIR[:SPLIT] the validation split comes from, or None.")
    val_samples: int | None = Field(description="Entries held out at the end of the index, or None.")


class PrepareSettings(BaseModel):
    """The request that produced the directory; a second prepare with other settings needs --force."""

    model_config = ConfigDict(extra="forbid")
    sources: list[str] = Field(description="Source specs as given on the command line.")
    tokenizer: str = Field(description="bpe, neox, or the tokenizer path as given.")
    vocab_size: int = Field(description="Requested BPE vocabulary (ignored for neox/file).")
    val_fraction: float
    max_documents: int | None
    text_field: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal[1] = 1
    sources: list[SourceRecord]
    tokenizer: TokenizerRecord
    splits: dict[str, SplitRecord]
    seed: int
    created: str = Field(description="UTC ISO-8601 time the directory was completed.")
    settings: PrepareSettings | ImportSettings

    def prefix(self, directory: str | os.PathLike, split: str = "train") -> Path:
        return Path(directory) / self.split(split).prefix

    def split(self, name: str) -> SplitRecord:
        if name not in self.splits:
            raise BadInput(f"split {name!r} not in this dataset; choose one of {sorted(self.splits)}")
        return self.splits[name]

    def dataset(self, directory: str | os.PathLike, split: str = "train") -> IndexedDataset:
        """The split's tokens: its .bin or shards, and only its entries of the index."""
        return self.split(split).dataset(directory)


def load_manifest(directory: str | os.PathLike) -> Manifest:
    """Read and check a prepared directory: manifest valid, every split's .bin/.idx and the tokenizer present."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise BadInput(f"{directory}: not a prepared data directory (no {MANIFEST}); run `meshctl data prepare --out {directory}`")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.errors()[0]["msg"]
        raise BadInput(f"{path}: unreadable manifest ({detail}); prepare the directory again with --force") from None
    missing = [s for s in SPLITS if s not in manifest.splits]
    needed = [directory / manifest.tokenizer.path]
    for name, split in manifest.splits.items():
        prefix = manifest.prefix(directory, name)
        needed.append(Path(f"{prefix}.idx"))
        if split.shards is None:
            needed.append(Path(f"{prefix}.bin"))
    missing += [str(p) for p in needed if not p.is_file()]
    if missing:
        raise BadInput(f"{directory}: incomplete prepared directory (missing {missing[0]}); prepare or import it again with --force")
    for split in manifest.splits.values():
        for shard in split.shards or []:
            path = directory / shard.path
            size = path.stat().st_size if path.is_file() else None
            if size != shard.bytes:
                found = "missing" if size is None else f"{size} bytes"
                raise BadInput(f"{path}: shard {found}, the manifest records {shard.bytes} bytes; restore it or import again")
    return manifest


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Atomic: a reader sees the old manifest, none, or the new one, never half of one."""
    path = Path(directory) / MANIFEST
    tmp = path.with_name(f"{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path

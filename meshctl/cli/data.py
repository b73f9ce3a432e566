"""`meshctl data prepare|import|info`: text -> tokenized GPT-NeoX .bin/.idx splits, existing ones registered in
place, and what a data directory holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from meshctl.cli.common import Format, FormatOpt, print_json, print_table, user_errors

app = typer.Typer(help="Prepare and inspect tokenized datasets.", no_args_is_help=True)

COLUMNS = [("split", "split"), ("documents", "documents"), ("tokens", "tokens")]


@app.command()
def prepare(
    sources: Annotated[
        list[str] | None,
        typer.Argument(help="Text/JSONL files or folders, demo, demo:wiki, demo:kjv, demo:kjv-books, hf:NAME[:SPLIT]."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory to write (created if missing).")] = ...,  # type: ignore[assignment]
    demo: Annotated[bool, typer.Option("--demo", help="Add the built-in demo corpus (Wikipedia leads + KJV).")] = False,
    tokenizer: Annotated[str, typer.Option(help="bpe (train on the corpus), neox (GPT-NeoX-20B), or PATH to tokenizer.json.")] = "bpe",
    vocab_size: Annotated[int, typer.Option(help="Vocabulary of the trained BPE.")] = 8192,
    val_fraction: Annotated[float, typer.Option(help="Share of documents held out for validation.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split.")] = 0,
    max_documents: Annotated[int | None, typer.Option(help="Read at most this many documents.")] = None,
    text_field: Annotated[str, typer.Option(help="Field holding the text in JSONL and HF rows.")] = "text",
    force: Annotated[bool, typer.Option("--force", help="Replace a different dataset already in --out.")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Tokenizer processes (default: the CPUs available); 1 tokenizes in-process.")
    ] = None,
    format: FormatOpt = Format.table,
) -> None:
    """Tokenize text into train/validation GPT-NeoX indexed datasets plus tokenizer.json and manifest.json."""
    with user_errors():
        from meshctl.data.prepare import prepare as run_prepare

        specs = (["demo"] if demo else []) + list(sources or [])
        if not specs:
            raise ValueError("no sources: give files/folders, demo, hf:NAME, or --demo")
        start = time.perf_counter()
        manifest = run_prepare(
            specs, out, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction, seed=seed,
            max_documents=max_documents, text_field=text_field, force=force, workers=workers,
        )
        seconds = round(time.perf_counter() - start, 2)
    show(out, manifest, format, seconds)


@app.command("import")
def import_(
    input: Annotated[str, typer.Argument(help="PATH/document (finds document.idx and document.bin or its "
                                              "document-NNNNN-of-MMMMM.bin shards), or the .idx.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write manifest.json and tokenizer.json in.")] = ...,  # type: ignore[assignment]
    tokenizer: Annotated[str, typer.Option(help="neox (GPT-NeoX-20B, Pythia's) or PATH to the data's tokenizer.json.")] = "neox",
    val_samples: Annotated[int | None, typer.Option(help="Hold out the last N samples for validation.")] = None,
    validation: Annotated[str | None, typer.Option(help="Validate on DIR[:SPLIT] of another data directory instead.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a different dataset already in --out.")] = False,
    format: FormatOpt = Format.table,
) -> None:
    """Register existing GPT-NeoX .bin/.idx data (Pythia's preshuffled Pile) in place, without copying it."""
    with user_errors():
        from meshctl.data.importing import import_data

        start = time.perf_counter()
        manifest = import_data(input, out, tokenizer=tokenizer, validation=validation, val_samples=val_samples, force=force)
        seconds = round(time.perf_counter() - start, 2)
    show(out, manifest, format, seconds)


@app.command()
def info(
    directory: Annotated[Path, typer.Argument(help="A directory written by `meshctl data prepare` or `import`.")],
    format: FormatOpt = Format.table,
) -> None:
    """Show a data directory's splits and tokenizer, after checking its files against the manifest."""
    with user_errors():
        from meshctl.data.manifest import load_manifest

        manifest = load_manifest(directory)
        for name, split in manifest.splits.items():
            ds = manifest.dataset(directory, name)
            if split.shards is not None:  # imported: the .idx must agree with the files it points into
                ds.check(exact=True)
            if ds.num_tokens != split.tokens or ds.num_documents != split.documents:
                raise ValueError(f"{directory}: {name} split does not match its manifest; prepare or import it again with --force")
    show(directory, manifest, format, None)


def show(directory: Path, manifest: Any, format: Format, seconds: float | None) -> None:
    if format == Format.json:
        doc: dict[str, Any] = {"directory": str(directory), "manifest": manifest.model_dump()}
        if seconds is not None:
            doc["seconds"] = seconds
        print_json(doc)
        return
    rows = [{"split": name, **split.model_dump()} for name, split in manifest.splits.items()]
    tok = manifest.tokenizer
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    title = f"{directory}{took}: {tok.kind} tokenizer, vocab {tok.vocab_size:,}, EOD {tok.eod_token_id}"
    print_table(rows, COLUMNS, title=title)

"""`meshctl export RUN --out DIR`: a trained run as a Hugging Face model directory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.common import Format, FormatOpt, ResultsDir, print_json, user_errors


def export(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique id prefix, or run directory.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write (new or empty, unless --force).")] = ...,  # type: ignore[assignment]
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    push: Annotated[str | None, typer.Option("--push", metavar="REPO", help="Upload to this hub repo (owner/name).")] = None,
    results_dir: ResultsDir = Path("results"),
    format: FormatOpt = Format.table,
) -> None:
    """Export a run for transformers: vanilla as GPTNeoXForCausalLM; recursive, MeSH and vanilla_mesh as
    trust_remote_code models. Weights (safetensors), tokenizer, generation config and a model card."""
    with user_errors():
        from meshctl.export.run import export_run

        result = export_run(run, out, results_dir=results_dir, force=force, push=push)
    if format == Format.json:
        print_json(result)
        return
    sys.stdout.write(f"exported run {result['run_id']} ({result['family']}, {result['architecture']}) to {result['out']}\n")
    if result["pushed"]:
        sys.stdout.write(f"pushed to {result['pushed']}\n")

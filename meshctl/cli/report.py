"""`meshctl report`: the paper's tables and plots from a sweep's finished runs (meshctl.analysis.report)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.common import ResultsDir, user_errors

DEFAULT_RESULTS = Path("results")


class ReportFormat(str, Enum):
    markdown = "markdown"
    csv = "csv"
    latex = "latex"
    json = "json"
    html = "html"


def report(
    sweep_name: Annotated[str | None, typer.Argument(metavar="[SWEEP]",
                                                     help="Sweep name (default: the most recently updated).")] = None,
    format: Annotated[ReportFormat, typer.Option("--format", help="markdown|latex|html tables, csv|json tidy runs.")]
    = ReportFormat.markdown,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Also write the PNG plots into this directory.")] = None,
    results_dir: ResultsDir = DEFAULT_RESULTS,
) -> None:
    """Per-scale tables (vanilla / recursive / MeSH: params, FLOPs, perplexity, accuracy, deltas) of a sweep,
    with each variant compared with base and vanilla seed by seed (mean difference, 95% CI, wins)."""
    from meshctl.analysis.report import build_report, render

    with user_errors():
        built = build_report(results_dir, sweep_name)
        text = render(built, format.value)
        if output is not None:
            if output.is_dir():
                raise FileNotFoundError(f"--output {output}: is a directory; name a file, e.g. {output}/report.md")
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text, encoding="utf-8")
        paths = []
        if plots is not None:
            from meshctl.analysis.plots import write_plots

            paths = write_plots(built.frame, plots, built.sweep)
    if output is None:
        sys.stdout.write(text)
    else:
        typer.echo(f"wrote {output}", err=True)
    if paths:
        typer.echo(f"plots: {', '.join(str(p) for p in paths)}", err=True)

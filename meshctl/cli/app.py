"""The Typer app. Commands import torch and friends inside their bodies, so `--help` stays fast."""

from __future__ import annotations

import typer

from meshctl import __version__
from meshctl.cli import data as data_cmd
from meshctl.cli import eval as eval_cmd
from meshctl.cli import models as models_cmd
from meshctl.cli import probe as probe_cmd
from meshctl.cli import report as report_cmd
from meshctl.cli import sweep as sweep_cmd
from meshctl.cli import train as train_cmd

app = typer.Typer(
    name="meshctl",
    help="Scaling studies of recursive transformers and MeSH: models, data, training, sweeps, reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meshctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """meshctl command line."""


app.command("models")(models_cmd.models)
app.add_typer(data_cmd.app, name="data")
app.command("eval")(eval_cmd.eval_)
app.command("sample")(eval_cmd.sample)
app.command("probe")(probe_cmd.probe)
for _name in ("sweep", "status", "cancel", "resubmit"):
    app.command(_name)(getattr(sweep_cmd, _name))
app.command("train")(train_cmd.train)
app.command("report")(report_cmd.report)


def main() -> None:
    app()

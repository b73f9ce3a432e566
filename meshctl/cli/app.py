"""The Typer app. Commands import torch and friends inside their bodies, so `--help` stays fast."""

from __future__ import annotations

import typer

from meshctl import __version__
from meshctl.cli import data as data_cmd
from meshctl.cli import eval as eval_cmd
from meshctl.cli import export as export_cmd
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


# In the order a study uses them: data -> train one run -> sweep -> status -> report -> eval/probe.
app.add_typer(data_cmd.app, name="data")
app.command("train")(train_cmd.train)
app.command("sweep")(sweep_cmd.sweep)
app.command("status")(sweep_cmd.status)
app.command("report")(report_cmd.report)
app.command("eval")(eval_cmd.eval_)
app.command("probe")(probe_cmd.probe)
app.command("sample")(eval_cmd.sample)
app.command("export")(export_cmd.export)
app.command("cancel")(sweep_cmd.cancel)
app.command("resubmit")(sweep_cmd.resubmit)
app.command("models")(models_cmd.models)


def main() -> None:
    """Usage errors (unknown option, bad choice, missing argument) as one line on stderr, exit 2."""
    import sys

    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # Typer's click: UsageError, BadParameter, NoArgsIsHelpError, ...
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `meshctl`: the help, as click would print it
            sys.stdout.write(message + "\n")
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        sys.stderr.write(f"error: {where}{message.splitlines()[0] if message else type(exc).__name__}\n")
        code = getattr(exc, "exit_code", 2)
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)

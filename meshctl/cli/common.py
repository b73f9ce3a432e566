"""Shared CLI plumbing: one-line errors with exit codes, JSON/table output, the results-dir option."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from meshctl.errors import BadInput, MeshctlError

F = TypeVar("F", bound=Callable[..., Any])


class Format(str, Enum):
    table = "table"
    json = "json"


ResultsDir = Annotated[
    Path,
    typer.Option("--results-dir", envvar="MESHCTL_RESULTS", help="Results root (env MESHCTL_RESULTS)."),
]
FormatOpt = Annotated[Format, typer.Option("--format", help="table for people, json for programs.")]


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit."""
    sys.stderr.write(f"error: {message.splitlines()[0] if message else 'failed'}\n")
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors into one line and an exit code; never a traceback for bad input."""
    from pydantic import ValidationError

    try:
        yield
    except MeshctlError as exc:
        fail(str(exc), exc.exit_code)
    except ValidationError as exc:
        fail(pydantic_message(exc), BadInput.exit_code)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), BadInput.exit_code)


def pydantic_message(exc: Any, prefix: str = "") -> str:
    """First validation error as `path.to.field: message`."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in (prefix, *err.get("loc", ())) if p != "")
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], title: str | None = None) -> None:
    """rows of dicts, columns as (key, header); numbers right-aligned."""
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for key, header in columns:
        numeric = any(isinstance(r.get(key), (int, float)) for r in rows)
        table.add_column(header, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(format_cell(row.get(key)) for key, _ in columns))
    console().print(table)


def console(stderr: bool = False) -> Any:
    """A rich console; piped or captured output gets a wide one so cells are never cut to 80 columns."""
    from rich.console import Console

    out = Console(stderr=stderr)
    return out if out.is_terminal else Console(stderr=stderr, width=max(out.width, 240))


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and abs(value) >= 1e4:
        return human(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def human(value: float) -> str:
    """1_208_602_624 -> '1.209B': short enough for a table; JSON keeps the exact number."""
    for unit, scale in (("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{unit}"
    return f"{value:g}"

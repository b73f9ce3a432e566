"""Reading spec files (YAML, or JSON by suffix): every failure is one BadInput line naming the file
and, for syntax errors, the line to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meshctl.errors import BadInput


def read_spec_file(path: str | Path, what: str) -> Any:
    """The parsed document of a `what` ("run spec", "sweep spec") file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such {what} file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read the {what} ({exc.__class__.__name__})") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path} line {exc.lineno}: invalid JSON ({exc.msg}); fix the syntax there") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise BadInput(f"{path}{line}: invalid YAML ({exc.problem or exc.context}); fix the syntax there") from None
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: invalid YAML ({exc})") from None

"""`meshctl models` and the CLI's start-up path."""

from __future__ import annotations

import json
import subprocess
import sys

from meshctl.models import PRESETS


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshctl", *args], capture_output=True, text=True, timeout=120)


def test_models_json_is_one_document_with_snake_case_keys() -> None:
    out = run("models", "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    rows = {row["name"]: row for row in doc["models"]}
    assert set(rows) == set(PRESETS)
    mesh = rows["pythia-1.4b-4+8R2+4-mesh"]
    assert mesh["structure"] == "4+8R2+4" and mesh["recurrence"] == "mesh" and mesh["mesh_slots"] == 5
    assert mesh["params_non_embedding"] == 805_797_918
    assert all(key == key.lower() and " " not in key for row in doc["models"] for key in row)
    assert set(doc["flop_formulas"]) == {"6N", "6N+attn", "palm"}


def test_models_table_lists_presets() -> None:
    out = run("models")
    assert out.returncode == 0, out.stderr
    assert "pythia-1.4b-4+8R2+4-mesh" in out.stdout and "805.8M" in out.stdout


def test_bad_option_exits_2_with_one_line() -> None:
    out = run("models", "--seq-len", "0")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--seq-len" in out.stderr


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from meshctl.cli.app import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "print(','.join(m for m in ('torch', 'lightning', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_usage_errors_are_one_line_with_exit_2() -> None:
    for args, needle in ((["models", "--format", "xml"], "--format"), (["sweep"], "Missing argument"),
                         (["frobnicate"], "No such command")):
        out = run(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and needle in out.stderr

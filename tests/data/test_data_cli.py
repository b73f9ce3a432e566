"""`meshctl data prepare|info` as a user runs them: exit codes, one-line errors, JSON on stdout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshctl", "data", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["prepare", "--out", "{tmp}/o", "{tmp}/missing.txt"], "no such file or folder"),
        (["prepare", "--out", "{tmp}/o"], "no sources"),
        (["prepare", "--out", "{tmp}/o", "--val-fraction", "2", "{tmp}/a.txt"], "--val-fraction"),
        (["info", "{tmp}"], "not a prepared data directory"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    (tmp_path / "a.txt").write_text("some text")
    out = run(*(a.format(tmp=tmp_path) for a in args))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and needle in out.stderr
    assert out.stdout == ""


def test_prepare_and_info_json(tmp_path, demo_documents):
    src = tmp_path / "docs"
    src.mkdir()
    for i, doc in enumerate(demo_documents[:40]):
        (src / f"{i:03d}.txt").write_text(doc, encoding="utf-8")
    out = run("prepare", str(src), "--out", str(tmp_path / "o"), "--vocab-size", "1024", "--val-fraction", "0.1", "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["directory"] == str(tmp_path / "o") and doc["seconds"] >= 0
    splits = doc["manifest"]["splits"]
    assert splits["train"]["documents"] == 36 and splits["validation"]["documents"] == 4
    info = run("info", str(tmp_path / "o"), "--format", "json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["manifest"] == doc["manifest"]
    table = run("info", str(tmp_path / "o"))
    assert table.returncode == 0 and "validation" in table.stdout and "vocab 1,024" in table.stdout

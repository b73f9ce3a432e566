"""Assertions shared by the training tests."""

from __future__ import annotations


def assert_refused(result, *words: str) -> None:
    """A CliRunner result that is bad input: exit 2, one `error:` line naming `words`, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.output

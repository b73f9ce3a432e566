"""Errors the CLI turns into one line on stderr and an exit code (2 = bad input, 1 = a failure)."""

from __future__ import annotations


class MeshctlError(Exception):
    """A failure with a message meant for the user; exit code 1."""

    exit_code = 1


class BadInput(MeshctlError):
    """Input refused before any work starts: the message names the field and the fix; exit code 2."""

    exit_code = 2

"""One backend per executor (`local.py`, `slurm.py`), all behind `base.Backend`; a new executor is one
module here named after its kind, plus the kind in meshctl/executor_kinds.py."""

from __future__ import annotations

import importlib

from meshctl.errors import BadInput
from meshctl.orchestrate.backends.base import Backend
from meshctl.executor_kinds import EXECUTOR_KINDS

__all__ = ["Backend", "backend"]


def backend(kind: str) -> Backend:
    if kind not in EXECUTOR_KINDS:
        raise BadInput(f"executor: unknown kind {kind!r}; use {' or '.join(EXECUTOR_KINDS)}")
    return importlib.import_module(f"meshctl.orchestrate.backends.{kind}").BACKEND

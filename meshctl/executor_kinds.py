"""The executors a sweep can run on, one name per backend in meshctl/orchestrate/backends/. At the top of
the package and importing nothing, so the CLI offers the choice without loading pydantic or orchestrate."""

from __future__ import annotations

from typing import Literal, get_args

ExecutorKind = Literal["local", "slurm"]
EXECUTOR_KINDS: tuple[str, ...] = get_args(ExecutorKind)

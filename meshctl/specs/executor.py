"""The executors a sweep can run on: one name per backend in meshctl/orchestrate/backends/ (no imports,
so the CLI can offer the choice without loading pydantic or the orchestrator)."""

from __future__ import annotations

from typing import Literal, get_args

ExecutorKind = Literal["local", "slurm"]
EXECUTOR_KINDS: tuple[str, ...] = get_args(ExecutorKind)

"""Helpers shared by the analysis tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def register(results: Path, spec: dict[str, Any]) -> list[Any]:
    """What `meshctl sweep` records before submitting: the sweep and its planned runs."""
    from meshctl.orchestrate.ledger import Ledger
    from meshctl.orchestrate.submit import ledger_path, run_dir_of
    from meshctl.specs.sweep import expand, parse_sweep, sweep_hash

    planned = expand(parse_sweep(spec))
    with Ledger(ledger_path(results)) as ledger:
        ledger.register_sweep(spec["name"], sweep_hash(spec), spec, "test", [
            (p.run_id, p.spec.model_dump(mode="json"), run_dir_of(results, p.run_id), p.labels) for p in planned])
    return planned

"""Pydantic specs for runs (and sweeps): validated, resolvable to self-contained JSON, no torch."""

from meshctl.specs.run import DataSpec, EvalSetSpec, RunSpec, TrainSpec, load_run_spec, parse_run_spec

__all__ = ["DataSpec", "EvalSetSpec", "RunSpec", "TrainSpec", "load_run_spec", "parse_run_spec"]

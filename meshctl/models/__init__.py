"""Models of the MeSH paper: specs and counts (no torch), modules and export (torch, imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshctl.models.counting import FLOP_FORMULAS, ParamCounts, count_params, flops_per_token
from meshctl.models.presets import PRESETS, get_preset, resolve
from meshctl.models.spec import ModelSpec, parse_structure

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn


def build(name_or_spec: str | dict[str, Any] | ModelSpec, seed: int | None = None) -> "nn.Module":
    """Build a model from a preset name, a dict or a `ModelSpec`; the same seed gives the same weights."""
    import torch

    from meshctl.models.families import build_module

    spec = resolve(name_or_spec)
    if seed is None:
        return build_module(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_module(spec)


def export_hf(model: "nn.Module", out_dir: "str | Path") -> "Path":
    """Write a vanilla model as a directory `transformers.GPTNeoXForCausalLM.from_pretrained` loads; returns it."""
    from meshctl.models.export import export_hf as _export

    return _export(model, out_dir)


def export_model(model: "nn.Module", out_dir: "str | Path") -> "Path":
    """Write any family for `transformers`: vanilla as GPT-NeoX (`export_hf`), recursive, MeSH and
    vanilla_mesh as a `trust_remote_code` directory running meshctl's own model code; returns it."""
    from meshctl.models.export import export_model as _export

    return _export(model, out_dir)


__all__ = [
    "FLOP_FORMULAS", "ModelSpec", "PRESETS", "ParamCounts", "build", "count_params", "export_hf", "export_model",
    "flops_per_token", "get_preset", "parse_structure", "resolve",
]

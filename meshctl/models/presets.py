"""Presets: Pythia widths (Biderman et al. 2023), the MeSH paper's recursive structures, tiny CPU models.

Every preset is a small delta on Pythia defaults (`ModelSpec`'s field defaults). Names are keys into
this table only; nothing is ever parsed back out of them.
"""

from __future__ import annotations

from typing import Any

from meshctl.models.spec import ModelSpec

# The tiny presets' base init std: inside the paper's small_init range, 0.023 (Pythia-160M) to 0.014 (1.4B).
TINY_INIT_STD = 0.02

# Pythia: gpt-neox configs/pythia/*.yml and the HF configs (shared/reference/pythia-data-flops.md §4.1).
SCALES: dict[str, ModelSpec] = {
    "pythia-70m": ModelSpec(n_layer=6, n_embd=512, n_head=8),
    "pythia-160m": ModelSpec(n_layer=12, n_embd=768, n_head=12),
    "pythia-410m": ModelSpec(n_layer=24, n_embd=1024, n_head=16),
    "pythia-1b": ModelSpec(n_layer=16, n_embd=2048, n_head=8),
    "pythia-1.4b": ModelSpec(n_layer=24, n_embd=2048, n_head=16),
    # The paper's v2 scales; v2's recursive layer configs are not known, so no PAPER_VARIANTS for them.
    "pythia-2.8b": ModelSpec(n_layer=32, n_embd=2560, n_head=32),
    # Pythia-6.9B trained with 2-way model parallelism, which pads the vocab to a multiple of 256 (HF: 50432).
    "pythia-6.9b": ModelSpec(n_layer=32, n_embd=4096, n_head=32, padding_multiple=256),
    # CPU scales for the demo and the tests: a trained 8k byte-level BPE keeps the head small. Their init
    # std is the paper's regime, not small_init's formula: sqrt(2 / 5d) is 0.023 (160M) to 0.014 (1.4B) at
    # the paper's widths but 0.056-0.079 at d=64-128, where recursive base, anchor and MeSH do not order
    # (sweeps/ablation_init.yaml, README "Init regime of the tiny presets").
    "tiny-64": ModelSpec(n_layer=4, n_embd=64, n_head=2, vocab_size=8192, block_size=1024, init_std=TINY_INIT_STD),
    "tiny-128": ModelSpec(n_layer=4, n_embd=128, n_head=4, vocab_size=8192, block_size=1024, init_std=TINY_INIT_STD),
    "tiny-256": ModelSpec(n_layer=6, n_embd=256, n_head=4, vocab_size=8192, block_size=1024, init_std=TINY_INIT_STD),
}

# The recursive structures and recurrences run at each scale: MeSH paper Table 1 (and Table 6 at 1.4B).
PAPER_VARIANTS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "pythia-160m": [("2+4R2+2", ("base", "anchor", "mesh"))],
    "pythia-410m": [
        ("4+8R2+4", ("base", "anchor", "mesh")),
        ("3+6R3+3", ("base", "residual", "anchor", "mesh")),
    ],
    "pythia-1b": [("3+5R2+3", ("base", "residual", "anchor_emb", "anchor", "mesh"))],
    "pythia-1.4b": [("4+8R2+4", ("base", "residual", "anchor_emb", "anchor", "mesh"))],
    "tiny-64": [("1+1R2+1", ("base", "anchor", "mesh"))],
    "tiny-128": [("1+1R2+1", ("base", "residual", "anchor", "mesh"))],
    "tiny-256": [("1+2R2+1", ("base", "residual", "anchor", "mesh"))],
}


def _variant_name(scale: str, structure: str, recurrence: str) -> str:
    return f"{scale}-{structure}-{recurrence}"


def _build_table() -> dict[str, ModelSpec]:
    table = dict(SCALES)
    for scale, groups in PAPER_VARIANTS.items():
        for structure, recurrences in groups:
            for recurrence in recurrences:
                spec = SCALES[scale].variant(family="recursive", structure=structure, recurrence=recurrence)
                table[_variant_name(scale, structure, recurrence)] = spec
    table["pythia-1.4b-4+8+8+4-mesh"] = SCALES["pythia-1.4b"].variant(
        family="vanilla_mesh", structure="4+8+8+4", recurrence="mesh"
    )
    return table


PRESETS: dict[str, ModelSpec] = _build_table()


def get_preset(name: str) -> ModelSpec:
    try:
        return PRESETS[name]
    except KeyError:
        close = [p for p in PRESETS if name.split("-")[0] in p][:5] or list(SCALES)
        raise ValueError(f"unknown preset {name!r}; known presets include {', '.join(close)} (see `meshctl models`)")


def resolve(spec: str | dict[str, Any] | ModelSpec) -> ModelSpec:
    """A preset name, a `ModelSpec`, or a dict: `{"preset": "pythia-410m", "structure": "4+8R2+4",
    "recurrence": "mesh"}` (a preset with changes) or a full spec."""
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, str):
        return get_preset(spec)
    if isinstance(spec, dict):
        changes = dict(spec)
        preset = changes.pop("preset", None)
        if preset is None:
            return ModelSpec.model_validate(changes)
        base = get_preset(preset)
        if "family" not in changes and base.family == "vanilla" and ("structure" in changes or "n_core" in changes):
            changes["family"] = "recursive"
        return base.variant(**changes)
    raise TypeError(f"expected a preset name, dict or ModelSpec, got {type(spec).__name__}")

"""`meshctl models`: every preset with its structure, counts and FLOPs/token."""

from __future__ import annotations

from typing import Annotated

import typer

from meshctl.cli.common import Format, FormatOpt, print_json, print_table, user_errors

COLUMNS = [
    ("name", "preset"),
    ("family", "family"),
    ("structure", "structure"),
    ("recurrence", "recurrence"),
    ("n_embd", "d"),
    ("n_head", "heads"),
    ("params_total", "total"),
    ("params_non_embedding", "non-emb"),
    ("params_unrolled_non_embedding", "unrolled"),
    ("params_recurrence", "routers"),
    ("flops_per_token_6n", "6N/tok"),
    ("flops_per_token_6n_attn", "+attn/tok"),
]


def models(
    format: FormatOpt = Format.table,
    seq_len: Annotated[int | None, typer.Option(help="Sequence length for attention FLOPs (default: preset's).")] = None,
) -> None:
    """List model presets: family, structure, width, parameter counts and FLOPs per token."""
    from meshctl.models import PRESETS
    from meshctl.models.counting import FLOP_FORMULAS, describe

    with user_errors():
        if seq_len is not None and seq_len < 1:
            raise ValueError("--seq-len must be a positive integer")
        rows = [describe(name, spec, seq_len) for name, spec in PRESETS.items()]
    if format == Format.json:
        print_json({"models": rows, "flop_formulas": FLOP_FORMULAS})
    else:
        print_table(rows, COLUMNS, title="meshctl model presets")

"""Analytic parameter and FLOP counts from a `ModelSpec` (no torch needed).

Conventions follow Pythia and the MeSH paper (Table 5): "embedding" parameters are the input embedding
and the (untied) output head, both padded to `padded_vocab_size`; everything else is non-embedding.
`unique` counts weights stored once (a shared core counts once); `unrolled` counts weights as applied
per token (a shared core counts once per loop) and is the N of compute formulas.

The paper's Table 5 totals are 8,388,608 (= 4096 x 2048) above Pythia-1.4B's real total, as if a
position table were counted; its non-embedding counts, which these functions reproduce, are exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from meshctl.models.spec import ModelSpec


def layer_params(spec: ModelSpec) -> int:
    """One GPT-NeoX layer: fused QKV + output projection, MLP d -> ffn -> d, two LayerNorms, all biased."""
    d, f = spec.n_embd, spec.ffn_size
    attention = (3 * d * d + 3 * d) + (d * d + d)
    mlp = (d * f + f) + (f * d + d)
    norms = 2 * (2 * d)
    return attention + mlp + norms


def recurrence_params(spec: ModelSpec) -> int:
    """Per-iteration parameters of the state-passing scheme (applied once each)."""
    if spec.family == "vanilla":
        return 0
    d, k = spec.n_embd, spec.n_loop
    if spec.recurrence == "mesh":
        # a transitional write/read pair plus one pair per iteration: Linear(D, B) with bias
        return (k + 1) * 2 * (d * spec.slots + spec.slots)
    if spec.recurrence == "static_comb":
        return 3 * k
    if spec.recurrence == "dynamic_comb":
        return k * (3 * d + 3)
    return 0


def embedding_params(spec: ModelSpec) -> int:
    return 2 * spec.padded_vocab_size * spec.n_embd  # untied embed_in + embed_out


@dataclass(frozen=True)
class ParamCounts:
    total: int  # stored = unique, embeddings included
    embedding: int
    non_embedding: int
    unique: int
    unrolled: int  # as applied per token, embeddings included
    unrolled_non_embedding: int
    recurrence: int  # routers / mixing coefficients, included in the counts above

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_params(spec: ModelSpec) -> ParamCounts:
    layer, final_norm = layer_params(spec), 2 * spec.n_embd
    extra, emb = recurrence_params(spec), embedding_params(spec)
    non_emb = spec.n_unique_layers * layer + final_norm + extra
    unrolled_non_emb = spec.n_unrolled * layer + final_norm + extra
    return ParamCounts(
        total=non_emb + emb,
        embedding=emb,
        non_embedding=non_emb,
        unique=non_emb + emb,
        unrolled=unrolled_non_emb + emb,
        unrolled_non_embedding=unrolled_non_emb,
        recurrence=extra,
    )


# Per-token training FLOPs (forward + backward = 3 x forward) under named formulas
# (shared/reference/pythia-data-flops.md §4.4). N is always the unrolled non-embedding count.
FLOP_FORMULAS: dict[str, str] = {
    "6N": "Kaplan et al. 2020: 6 * N_unrolled_non_embedding",
    "6N+attn": "Kaplan et al. 2020 with attention: 6 * N + 6 * L_unrolled * T * d",
    "palm": "PaLM App. B / nanoGPT MFU: 6 * (N + V_pad * d) + 12 * L_unrolled * d * T (LM head and attention included)",
}


def flops_per_token(spec: ModelSpec, seq_len: int | None = None, formula: str = "6N") -> float:
    if formula not in FLOP_FORMULAS:
        raise ValueError(f"unknown FLOP formula {formula!r}; choose one of {', '.join(FLOP_FORMULAS)}")
    t = seq_len or spec.block_size
    counts = count_params(spec)
    n, layers, d = counts.unrolled_non_embedding, spec.n_unrolled, spec.n_embd
    if formula == "6N":
        return 6.0 * n
    if formula == "6N+attn":
        return 6.0 * n + 6.0 * layers * t * d
    return 6.0 * (n + spec.padded_vocab_size * d) + 12.0 * layers * d * t


def describe(name: str, spec: ModelSpec, seq_len: int | None = None) -> dict[str, object]:
    """One row of `meshctl models`: identity, shape, counts and FLOPs/token (snake_case keys)."""
    counts = count_params(spec)
    row: dict[str, object] = {
        "name": name,
        "family": spec.family,
        "structure": spec.structure,
        "recurrence": spec.recurrence if spec.family != "vanilla" else None,
        "mesh_slots": spec.slots if spec.recurrence == "mesh" and spec.family != "vanilla" else None,
        "n_embd": spec.n_embd,
        "n_head": spec.n_head,
        "n_unrolled_layers": spec.n_unrolled,
        "n_unique_layers": spec.n_unique_layers,
        "vocab_size": spec.padded_vocab_size,
        **{f"params_{k}": v for k, v in counts.as_dict().items()},
        "seq_len": seq_len or spec.block_size,
    }
    for formula in FLOP_FORMULAS:
        row[f"flops_per_token_{formula.replace('+', '_').lower()}"] = flops_per_token(spec, seq_len, formula)
    return row

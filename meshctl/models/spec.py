"""Model specs: one validated description of every model meshctl builds.

A spec is data (Pydantic, no torch), so the CLI, the sweep planner and the counting module can use it
without importing torch. Field names follow litgpt / GPT-NeoX and the MeSH paper (arXiv 2510.07739):
`n_embd`, `n_head`, `rotary_pct`, `n_prelude`, `n_core`, `n_loop`, `n_coda`, `recurrence`, `mesh_slots`.
The structure id `P+CRk+D` (e.g. `4+8R2+4`) is the paper's notation and is accepted as input.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Family = Literal["vanilla", "recursive", "vanilla_mesh"]

# State passing between core iterations (paper §3.1, Table 4). Additive schemes add fixed terms
# (h_sup in Eq. 1); `*_comb` learn the mixing; `mesh` routes through the memory buffer (§3.2).
Recurrence = Literal[
    "base",
    "residual",
    "anchor",
    "anchor_emb",
    "residual+anchor",
    "residual+anchor+anchor_emb",
    "anchor+anchor_emb",
    "static_comb",
    "dynamic_comb",
    "mesh",
]

# (The terms each additive scheme adds are `meshctl.models.recurrence.ADDITIVE_TERMS`.)

_STRUCTURE_RE = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*R\s*(\d+)\s*\+\s*(\d+)\s*$")
_UNSHARED_RE = re.compile(r"^\s*\d+(\s*\+\s*\d+){2,}\s*$")


def parse_structure(structure: str) -> dict[str, int]:
    """`"4+8R2+4"` -> prelude 4, core 8, loops 2, coda 4; `"4+8+8+4"` (distinct cores) likewise."""
    m = _STRUCTURE_RE.match(structure)
    if m:
        p, c, k, d = (int(g) for g in m.groups())
        return {"n_prelude": p, "n_core": c, "n_loop": k, "n_coda": d}
    if _UNSHARED_RE.match(structure):
        parts = [int(x) for x in structure.split("+")]
        cores = parts[1:-1]
        if len(set(cores)) != 1:
            raise ValueError(f"structure {structure!r}: every core block must have the same depth")
        return {"n_prelude": parts[0], "n_core": cores[0], "n_loop": len(cores), "n_coda": parts[-1]}
    raise ValueError(
        f"structure {structure!r} is not of the form P+CRk+D (e.g. '4+8R2+4') or P+C+...+C+D (e.g. '4+8+8+4')"
    )


class ModelSpec(BaseModel):
    """A GPT-NeoX (Pythia) model: vanilla, recursive (prelude + shared core x n_loop + coda), or
    vanilla with MeSH at block boundaries (paper Table 6)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Family = Field("vanilla", description="vanilla | recursive | vanilla_mesh")
    n_embd: int = Field(..., gt=0, description="hidden size d")
    n_head: int = Field(..., gt=0, description="attention heads; must divide n_embd")
    n_layer: int | None = Field(
        None, gt=0, description="depth of a vanilla model; for other families the unrolled depth it must match"
    )
    n_prelude: int | None = Field(None, ge=0, description="prelude layers (recursive, vanilla_mesh)")
    n_core: int | None = Field(None, gt=0, description="layers in the core block")
    n_loop: int | None = Field(None, gt=0, description="core iterations K (distinct cores for vanilla_mesh)")
    n_coda: int | None = Field(None, ge=0, description="coda layers")
    recurrence: Recurrence = Field("base", description="state passing between core iterations")
    mesh_slots: int | None = Field(None, description="MeSH buffer slots B; default n_loop + 3 (paper App. E.1)")
    vocab_size: int = Field(50254, gt=0, description="tokenizer vocabulary size")
    padding_multiple: int = Field(128, gt=0, description="vocab padded up to a multiple of this (Pythia: 50304)")
    intermediate_size: int | None = Field(None, gt=0, description="MLP width; default 4 * n_embd")
    rotary_pct: float = Field(0.25, ge=0.0, le=1.0, description="fraction of head dims with rotary embedding")
    rotary_base: float = Field(10000.0, gt=0, description="rotary base")
    layer_norm_eps: float = Field(1e-5, gt=0)
    block_size: int = Field(2048, gt=0, description="maximum sequence length")
    scale_embeddings: bool = Field(True, description="multiply token embeddings by sqrt(n_embd) (paper App. B)")
    depth_init: bool = Field(True, description="output projections init std / sqrt(2 * unrolled layers) (App. B)")
    init_std: float | None = Field(None, gt=0, description="base init std; default sqrt(2 / (5 d)) (Pythia small_init)")

    @model_validator(mode="before")
    @classmethod
    def _expand_structure(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("structure") is not None:
            data = dict(data)
            parsed = parse_structure(str(data.pop("structure")))
            for key, value in parsed.items():
                if data.get(key) is not None and data[key] != value:
                    raise ValueError(f"structure gives {key}={value} but {key}={data[key]} was also set")
                data[key] = value
        elif isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "structure"}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} does not divide n_embd={self.n_embd}")
        if self.head_size % 2 and self.rotary_dims:
            raise ValueError(f"head size {self.head_size} must be even for rotary embeddings")
        loop_fields = ("n_prelude", "n_core", "n_loop", "n_coda")
        if self.family == "vanilla":
            if self.n_layer is None:
                raise ValueError("a vanilla model needs n_layer")
            if any(getattr(self, f) is not None for f in loop_fields):
                raise ValueError("a vanilla model takes n_layer, not a structure; use family 'recursive'")
            if self.recurrence != "base" or self.mesh_slots is not None:
                raise ValueError("recurrence and mesh_slots apply to recursive models only")
            return self
        missing = [f for f in loop_fields if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.family} model needs a structure such as '4+8R2+4' (missing {missing})")
        if self.family == "vanilla_mesh" and self.recurrence != "mesh":
            raise ValueError("family vanilla_mesh needs recurrence 'mesh'")
        if self.n_layer is not None and self.n_layer != self.n_unrolled:
            raise ValueError(
                f"structure {self.structure} unrolls to {self.n_unrolled} layers but n_layer is {self.n_layer}: "
                "change the structure or n_layer to match"
            )
        if self.recurrence == "mesh":
            if self.slots < 1:
                raise ValueError(f"mesh_slots must be >= 1 (got {self.mesh_slots})")
        elif self.mesh_slots is not None:
            raise ValueError("mesh_slots applies to recurrence 'mesh' only")
        return self

    # Derived shapes (never stored, never parsed back out of a name).
    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rotary_dims(self) -> int:
        return int(self.head_size * self.rotary_pct)

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size or 4 * self.n_embd

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.padding_multiple) * self.padding_multiple

    def embedding_mismatch(self, tokenizer_vocab: int) -> str | None:
        """Why a tokenizer with ids [0, tokenizer_vocab) cannot train this model, or None when the embedding
        (padded_vocab_size rows) covers every id. GPT-NeoX-20B's 50,277 ids fit Pythia's 50,304 rows although
        its base vocabulary (vocab_size) is 50,254."""
        rows = self.padded_vocab_size
        if tokenizer_vocab <= rows:
            return None
        return (
            f"the tokenizer's {tokenizer_vocab:,} token ids exceed the model's embedding of {rows:,} rows "
            f"(model.vocab_size {self.vocab_size} padded to a multiple of {self.padding_multiple}): set "
            f"model.vocab_size >= {tokenizer_vocab} or use a tokenizer of at most {rows:,} ids (bpe: --vocab-size {rows})"
        )

    @property
    def shares_core(self) -> bool:
        return self.family == "recursive"

    @property
    def n_unrolled(self) -> int:
        """Layers applied per forward pass (the compute depth)."""
        if self.family == "vanilla":
            return self.n_layer  # type: ignore[return-value]
        return self.n_prelude + self.n_core * self.n_loop + self.n_coda  # type: ignore[operator]

    @property
    def n_unique_layers(self) -> int:
        """Layers whose weights are stored."""
        if self.family == "recursive":
            return self.n_prelude + self.n_core + self.n_coda  # type: ignore[operator]
        return self.n_unrolled

    @property
    def slots(self) -> int:
        return self.mesh_slots if self.mesh_slots is not None else self.n_loop + 3  # type: ignore[operator]

    @property
    def structure(self) -> str:
        """The paper's layer-config id: `12`, `4+8R2+4`, or `4+8+8+4` for distinct cores."""
        if self.family == "vanilla":
            return str(self.n_layer)
        if self.family == "vanilla_mesh":
            return "+".join(str(x) for x in [self.n_prelude, *[self.n_core] * self.n_loop, self.n_coda])
        return f"{self.n_prelude}+{self.n_core}R{self.n_loop}+{self.n_coda}"

    @property
    def base_std(self) -> float:
        return self.init_std if self.init_std is not None else math.sqrt(2.0 / (5.0 * self.n_embd))

    def variant(self, **changes: Any) -> ModelSpec:
        """A copy with fields changed and re-validated, e.g. `pythia_410m.variant(family="recursive",
        structure="4+8R2+4", recurrence="mesh")`. A kept `n_layer` checks the new structure's unrolled
        depth against the original model (matched compute); pass `n_layer=None` to drop that check."""
        data = self.model_dump(exclude_none=True)
        if changes.get("family") == "vanilla":
            for key in ("n_prelude", "n_core", "n_loop", "n_coda", "mesh_slots", "recurrence"):
                data.pop(key, None)
        data.update(changes)
        return ModelSpec.model_validate(data)

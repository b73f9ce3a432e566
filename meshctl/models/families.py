"""Model families: vanilla GPT-NeoX, and prelude / core x n_loop / coda recursion (MeSH paper §3).

Both families share embeddings, final norm, LM head and init; they differ only in how the same
`Block` is composed. A recursive model stores its core once and loops it in `forward`; `n_loop` is a
keyword argument of forward (default: the spec's), so a model trained with 2 loops can be run with 3.
`vanilla_mesh` (paper Table 6) is the recursive composition with a distinct core per step.

This forward is the only one: generation passes a KV cache (`meshctl.models.cache`; one entry per layer
application) and left-padding masks, probes pass `record(name, h)` to see the stage states, and the
exported `trust_remote_code` model runs this file itself. Torch only, relative imports only: it ships
verbatim in exported model directories (`meshctl.models.export`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .block import Block, ModelSpec, RotaryCache, Stack
from .cache import attention_inputs
from .loss import linear_cross_entropy
from .recurrence import build_recurrence

Record = Callable[[str, torch.Tensor], None]


class LanguageModel(nn.Module):
    """Embeddings, final LayerNorm, untied LM head and Pythia-style init; subclasses compose the layers."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed_in = nn.Embedding(spec.padded_vocab_size, spec.n_embd)
        self.rotary = RotaryCache(spec)
        self.final_layer_norm = nn.LayerNorm(spec.n_embd, eps=spec.layer_norm_eps)
        self.embed_out = nn.Linear(spec.n_embd, spec.padded_vocab_size, bias=False)
        self.embed_scale = math.sqrt(spec.n_embd) if spec.scale_embeddings else 1.0

    def reset_parameters(self) -> None:
        """Normal(0, std) weights (Pythia small_init: sqrt(2 / 5d)), zero biases, unit norms; output
        projections of every layer scaled by 1 / sqrt(2 * unrolled layers) when `depth_init` (App. B)."""
        std = self.spec.base_std
        out_std = std / math.sqrt(2 * self.spec.n_unrolled) if self.spec.depth_init else std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_output_proj = name.endswith(("attention.dense", "mlp.dense_4h_to_h"))
                nn.init.normal_(module.weight, mean=0.0, std=out_std if is_output_proj else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def embed(self, input_ids: torch.Tensor, past: int = 0) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if past + input_ids.shape[1] > self.spec.block_size:
            raise ValueError(f"sequence length {past + input_ids.shape[1]} exceeds block_size {self.spec.block_size}")
        h = self.embed_in(input_ids)  # (batch, seq, n_embd)
        return h * self.embed_scale if self.embed_scale != 1.0 else h

    def attention_inputs(self, h: torch.Tensor, cache: Any, attention_mask: torch.Tensor | None,
                         position_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """cos, sin at the new tokens' positions and the attention mask (None: causal) for h (batch, t, d)."""
        t, past = h.shape[1], cache.get_seq_length() if cache is not None else 0
        positions, mask = attention_inputs(t, past, attention_mask, position_ids, h.device)
        if positions is None:  # positions past .. past + t - 1, the same for every row
            cos, sin = self.rotary(past + t, h.device, h.dtype)  # (past + t, 1, 1, rotary_dims)
            return cos[past:], sin[past:], mask
        cos, sin = self.rotary(int(positions.max()) + 1, h.device, h.dtype)
        return cos[positions], sin[positions], mask  # (batch, t, 1, 1, rotary_dims): each row at its own

    def head(self, h: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, seq, padded_vocab), or with `targets` (batch, seq) the mean token NLL (fp32
        scalar) from the fused head + cross-entropy, which never holds the logits for backward."""
        h = self.final_layer_norm(h)
        if targets is None:
            return self.embed_out(h)
        if targets.shape != h.shape[:2]:
            raise ValueError(f"targets must be (batch, seq) = {tuple(h.shape[:2])}, got {tuple(targets.shape)}")
        return linear_cross_entropy(h.flatten(0, 1), self.embed_out.weight, targets.flatten())


class VanillaLM(LanguageModel):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.layers = Stack(spec, spec.n_layer)

    def layer_applications(self, n_loop: int | None = None) -> int:
        """Layers one forward applies: the entries of its KV cache (a vanilla model has no loop)."""
        return self.spec.n_layer

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *, cache: Any = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                record: Record | None = None) -> torch.Tensor:
        """Logits (batch, seq, padded_vocab) or, with targets, the mean token NLL. `cache`, `attention_mask`
        and `position_ids` as in `RecursiveLM.forward`; `record` sees `h_emb`, `layer_<i>` and `h_out`."""
        h = self.embed(input_ids, cache.get_seq_length() if cache is not None else 0)
        cos, sin, mask = self.attention_inputs(h, cache, attention_mask, position_ids)
        if record is not None:
            record("h_emb", h)
        h = self.layers(h, cos, sin, cache, 0, mask, record)
        if record is not None:
            record("h_out", h)
        return self.head(h, targets)


class RecursiveLM(LanguageModel):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.prelude = Stack(spec, spec.n_prelude)
        if spec.shares_core:
            self.core = Stack(spec, spec.n_core)
        else:
            self.cores = nn.ModuleList(Stack(spec, spec.n_core) for _ in range(spec.n_loop))
        self.coda = Stack(spec, spec.n_coda)
        self.recurrence = build_recurrence(spec)

    def core_at(self, t: int) -> Stack:
        return self.core if self.spec.shares_core else self.cores[t]

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.recurrence.reset_parameters()

    def layer_applications(self, n_loop: int | None = None) -> int:
        """Layers one forward applies at depth n_loop: the entries of its KV cache."""
        n_loop = self.spec.n_loop if n_loop is None else n_loop
        return self.spec.n_prelude + self.spec.n_core * n_loop + self.spec.n_coda

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, n_loop: int | None = None, *,
                cache: Any = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, record: Record | None = None) -> torch.Tensor:
        """Logits (batch, seq, padded_vocab) or, with targets, the mean token NLL.

        With `cache`, input_ids are the new tokens after the cached ones; layer application i (prelude,
        then each loop's core layers, then coda) reads and extends cache entry i. `attention_mask` (batch,
        cached + new; 0 on left padding) and `position_ids` (batch, new) as `transformers` passes them.
        `record(name, h)` sees `h_emb`, `prelude_out`, the loop states `h0` .. `hK`, each core output
        `core_out<t>` (before the recurrence combines it) and `h_out`."""
        n_loop = self.spec.n_loop if n_loop is None else n_loop
        if n_loop < 1:
            raise ValueError(f"n_loop must be >= 1, got {n_loop}")
        if not self.spec.shares_core and n_loop != self.spec.n_loop:
            raise ValueError(f"a {self.spec.family} model has {self.spec.n_loop} distinct cores; n_loop cannot change")
        note = record or (lambda name, h: None)
        h_emb = self.embed(input_ids, cache.get_seq_length() if cache is not None else 0)
        cos, sin, mask = self.attention_inputs(h_emb, cache, attention_mask, position_ids)
        note("h_emb", h_emb)
        h_pre = self.prelude(h_emb, cos, sin, cache, 0, mask)
        note("prelude_out", h_pre)
        h, ctx = self.recurrence.begin(h_emb, h_pre)
        note("h0", h)
        first = self.spec.n_prelude
        for t in range(n_loop):
            h_core = self.core_at(t)(h, cos, sin, cache, first, mask)
            note(f"core_out{t + 1}", h_core)
            h = self.recurrence.step(t, h, h_core, ctx)
            note(f"h{t + 1}", h)
            first += self.spec.n_core
        h = self.coda(h, cos, sin, cache, first, mask)
        note("h_out", h)
        return self.head(h, targets)


def module_class(spec: ModelSpec) -> type[LanguageModel]:
    return VanillaLM if spec.family == "vanilla" else RecursiveLM


def build_module(spec: ModelSpec) -> LanguageModel:
    model = module_class(spec)(spec)
    model.reset_parameters()
    return model


__all__ = ["Block", "LanguageModel", "RecursiveLM", "VanillaLM", "build_module"]

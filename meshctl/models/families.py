"""Model families: vanilla GPT-NeoX, and prelude / core x n_loop / coda recursion (MeSH paper §3).

Both families share embeddings, final norm, LM head and init; they differ only in how the same
`Block` is composed. A recursive model stores its core once and loops it in `forward`; `n_loop` is a
keyword argument of forward (default: the spec's), so a model trained with 2 loops can be run with 3.
`vanilla_mesh` (paper Table 6) is the recursive composition with a distinct core per step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from meshctl.models.block import Block, RotaryCache, Stack
from meshctl.models.loss import linear_cross_entropy
from meshctl.models.recurrence import DynamicComb, build_recurrence
from meshctl.models.spec import ModelSpec


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
        for module in self.modules():
            if isinstance(module, DynamicComb):
                module.reset_parameters()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.spec.block_size:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds block_size {self.spec.block_size}")
        h = self.embed_in(input_ids)  # (batch, seq, n_embd)
        return h * self.embed_scale if self.embed_scale != 1.0 else h

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

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(input_ids)
        cos, sin = self.rotary(h.shape[1], h.device, h.dtype)
        return self.head(self.layers(h, cos, sin), targets)


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

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, n_loop: int | None = None,
                ) -> torch.Tensor:
        n_loop = self.spec.n_loop if n_loop is None else n_loop
        if n_loop < 1:
            raise ValueError(f"n_loop must be >= 1, got {n_loop}")
        if not self.spec.shares_core and n_loop != self.spec.n_loop:
            raise ValueError(f"a {self.spec.family} model has {self.spec.n_loop} distinct cores; n_loop cannot change")
        h_emb = self.embed(input_ids)
        cos, sin = self.rotary(h_emb.shape[1], h_emb.device, h_emb.dtype)
        h, ctx = self.recurrence.begin(h_emb, self.prelude(h_emb, cos, sin))
        for t in range(n_loop):
            h = self.recurrence.step(t, h, self.core_at(t)(h, cos, sin), ctx)
        return self.head(self.coda(h, cos, sin), targets)


def build_module(spec: ModelSpec) -> LanguageModel:
    model = VanillaLM(spec) if spec.family == "vanilla" else RecursiveLM(spec)
    model.reset_parameters()
    return model


__all__ = ["Block", "LanguageModel", "RecursiveLM", "VanillaLM", "build_module"]

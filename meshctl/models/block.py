"""One GPT-NeoX layer as in Pythia (Biderman et al. 2023; gpt-neox `configs/pythia/*.yml`).

Parallel residual (`gpt-j-residual: true`): x + attn(ln1(x)) + mlp(ln2(x)); rotary embedding on the
first `rotary_pct` of each head's dims (non-interleaved halves, base 10000); fused QKV laid out per head
as [q | k | v]; causal SDPA; GELU MLP; biases everywhere; LayerNorm eps 1e-5. Parameter names match
`transformers`' GPTNeoXLayer so a vanilla model exports by renaming only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meshctl.models.spec import ModelSpec


class RotaryCache(nn.Module):
    """cos/sin tables for the rotary dims, computed once per forward and shared by every layer and loop."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.dims = spec.rotary_dims
        inv_freq = 1.0 / (spec.rotary_base ** (torch.arange(0, self.dims, 2, dtype=torch.float32) / self.dims))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(device))  # (seq, dims/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (seq, dims)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `cos.shape[-1]` dims of x (batch, heads, seq, head_size); pass the rest through."""
    dims = cos.shape[-1]
    rot, rest = x[..., :dims], x[..., dims:]
    half = dims // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.n_head, self.head_size = spec.n_head, spec.head_size
        self.query_key_value = nn.Linear(spec.n_embd, 3 * spec.n_embd)
        self.dense = nn.Linear(spec.n_embd, spec.n_embd)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.query_key_value(x).view(b, t, self.n_head, 3 * self.head_size).transpose(1, 2)
        q, k, v = qkv.split(self.head_size, dim=-1)  # (batch, heads, seq, head_size) each
        if cos.shape[-1]:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (batch, heads, seq, head_size)
        return self.dense(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(spec.n_embd, spec.ffn_size)
        self.dense_4h_to_h = nn.Linear(spec.ffn_size, spec.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))


class Block(nn.Module):
    """x -> x + attention(ln1(x)) + mlp(ln2(x))."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(spec.n_embd, eps=spec.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(spec.n_embd, eps=spec.layer_norm_eps)
        self.attention = Attention(spec)
        self.mlp = MLP(spec)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x + self.attention(self.input_layernorm(x), cos, sin) + self.mlp(self.post_attention_layernorm(x))


class Stack(nn.ModuleList):
    """A run of layers applied in order (prelude, core, coda, or a vanilla model's layers)."""

    def __init__(self, spec: ModelSpec, n: int) -> None:
        super().__init__(Block(spec) for _ in range(n))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, cos, sin)
        return x

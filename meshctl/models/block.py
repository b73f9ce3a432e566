"""One GPT-NeoX layer as in Pythia (Biderman et al. 2023; gpt-neox `configs/pythia/*.yml`).

Parallel residual (`gpt-j-residual: true`): x + attn(ln1(x)) + mlp(ln2(x)); rotary embedding on the
first `rotary_pct` of each head's dims (non-interleaved halves, base 10000); fused QKV laid out per head
as [q | k | v]; causal SDPA; GELU MLP; biases everywhere; LayerNorm eps 1e-5. Parameter names match
`transformers`' GPTNeoXLayer so a vanilla model exports by renaming only.

`spec` is a `meshctl.models.ModelSpec`, or the exported config's copy of its fields. Torch only, relative
imports only: this file ships verbatim in exported model directories (`meshctl.models.export`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ModelSpec = Any  # meshctl.models.ModelSpec or the exported config's view of it; not imported (see above)


class RotaryCache(nn.Module):
    """cos/sin tables for the rotary dims, shared by every layer and loop, cached per (device, dtype) at the
    longest length asked for so far; shorter lengths get views of its first rows.

    Tables are (seq, 1, 1, rotary_dims), laid out to broadcast over (batch, seq, heads, 2, rotary_dims) (q
    and k together), and `sin` carries rotate_half's sign: x * cos + swap_halves(x) * sin is the rotation.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.dims, self.base = spec.rotary_dims, float(spec.rotary_base)
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (torch.device(device), dtype)
        if key not in self._tables or self._tables[key][0].shape[0] < seq_len:
            # plain tensors even if first asked for under inference_mode, so that training can save them
            with torch.inference_mode(False), torch.no_grad():
                # from scratch, not from a buffer: a model built on the meta device (transformers) has none
                inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dims, 2, dtype=torch.float32) / self.dims))
                t = torch.arange(seq_len, device=device, dtype=torch.float32)
                freqs = torch.outer(t, inv_freq.to(device))[:, None, None, :]  # (seq, 1, 1, dims/2)
                cos, sin = freqs.cos(), freqs.sin()
                self._tables[key] = (torch.cat((cos, cos), -1).to(dtype), torch.cat((-sin, sin), -1).to(dtype))
        cos, sin = self._tables[key]
        return cos[:seq_len], sin[:seq_len]


class Rotary(torch.autograd.Function):
    """Rotary embedding of q and k inside the fused projection output (batch, seq, heads, 3 * head_size).

    Why a Function: autograd through rotate_half (slices, a negation, a `cat`) and the `cat` with the
    pass-through dims runs about a dozen small kernels per tensor each way, zero-filled slice gradients
    included, and keeps the projection output alive next to new q and k tensors for backward. Here
    forward is one copy of qkv and three kernels on the rotated dims of q and k together, backward the
    inverse rotation with the same count, and SDPA reads q, k, v as views of the one rotated copy. On
    CPU this is time-neutral (a layer is GEMM-bound) and takes ~8% off a training step's peak memory at
    d256 / seq 256 (benchmarks/speed.py); on a GPU in eager mode it saves kernel launches.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cos, sin = cos.to(qkv.dtype), sin.to(qkv.dtype)
        ctx.save_for_backward(cos, sin)
        out = qkv.clone(memory_format=torch.contiguous_format)
        dims = cos.shape[-1]
        _rotated(out, dims).mul_(cos).addcmul_(_swap_halves(_rotated(qkv, dims)), sin)  # x cos + rotate_half(x) sin
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        out = grad.clone(memory_format=torch.contiguous_format)
        dims = cos.shape[-1]
        _rotated(out, dims).mul_(cos).addcmul_(_swap_halves(_rotated(grad, dims)), sin, value=-1.0)  # transposed
        return out, None, None


def _rotated(qkv: torch.Tensor, dims: int) -> torch.Tensor:
    """The view of the first `dims` dims of q and k: (batch, seq, heads, 2, dims)."""
    head_size = qkv.shape[-1] // 3
    return qkv[..., : 2 * head_size].unflatten(-1, (2, head_size))[..., :dims]


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `cos.shape[-1]` dims of each head's q and k in qkv (batch, seq, heads, 3 * head_size)
    (GPT-NeoX's non-interleaved halves); the other dims of q and k, and v, pass through."""
    return Rotary.apply(qkv, cos, sin) if cos.shape[-1] else qkv


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.n_head, self.head_size = spec.n_head, spec.head_size
        self.query_key_value = nn.Linear(spec.n_embd, 3 * spec.n_embd)
        self.dense = nn.Linear(spec.n_embd, spec.n_embd)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: Any = None, layer_idx: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """With `cache` (a `KVCache` or `transformers` Cache), x holds new tokens after the cached ones and
        their keys and values are appended to entry `layer_idx`; `mask` (batch|1, 1, t, keys) is then needed
        unless the chunk is one token or the cache is empty (`meshctl.models.cache.attention_inputs`)."""
        b, t, d = x.shape
        qkv = apply_rotary(self.query_key_value(x).view(b, t, self.n_head, 3 * self.head_size), cos, sin)
        q, k, v = qkv.transpose(1, 2).split(self.head_size, dim=-1)  # (batch, heads, seq, head_size) views
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)  # (batch, heads, past + seq, head_size)
        if mask is None and t > 1:  # a branch, not is_causal=<expr>: compiled with dynamic shapes, t is symbolic
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (batch, heads, seq, head_size)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
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

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: Any = None, layer_idx: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.attention(self.input_layernorm(x), cos, sin, cache, layer_idx, mask)
        return x + attn + self.mlp(self.post_attention_layernorm(x))


class Stack(nn.ModuleList):
    """A run of layers applied in order (prelude, core, coda, or a vanilla model's layers). With a cache,
    layer i is layer application `first + i`; `record(name, h)` sees each layer's output as `layer_<first+i+1>`."""

    def __init__(self, spec: ModelSpec, n: int) -> None:
        super().__init__(Block(spec) for _ in range(n))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: Any = None,  # type: ignore[override]
                first: int = 0, mask: torch.Tensor | None = None, record: Any = None) -> torch.Tensor:
        for i, layer in enumerate(self):
            x = layer(x, cos, sin, cache, first + i, mask)
            if record is not None:
                record(f"layer_{first + i + 1}", x)
        return x

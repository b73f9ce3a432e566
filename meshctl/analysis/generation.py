"""Unrolled forward with a KV cache, and sampling, for every model family.

The models' own `forward` attends over the whole sequence and keeps no cache. `unrolled_forward` runs the
same modules (embedding, rotary tables, each `Block`'s submodules, the recurrence scheme, the head) on a
chunk of new tokens, reading and extending a `KVCache`. The cache holds one entry per *application* of a
layer, keyed (stage, loop, layer index): a core layer looped K times has K entries, since its inputs,
and so its keys and values, differ per loop. Every recurrence scheme acts per token (additive terms,
per-token mixers and routers, MeSH's buffer reads and writes), so only attention needs the past.

Without a cache `unrolled_forward` calls each `Block` itself, which is exactly `model(input_ids)`; the
`record` hook exposes the stage states the probes read (`meshctl.analysis.probe`).
Batches of prompts of different lengths are left-padded: each row keeps its own positions (rotary) and
its padding is masked out of attention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from meshctl.models.block import Block, apply_rotary

Key = tuple[str, int, int]  # (stage, loop, layer index)
Record = Callable[[str, torch.Tensor], None]


class KVCache:
    """Keys and values of every layer application, preallocated to `max_len` positions.

    `valid` (batch, max_len) marks real tokens (False on left padding); `positions` are each row's token
    positions for rotary. `length` counts the positions filled so far (padding included)."""

    def __init__(self, batch: int, max_len: int, n_loop: int | None, pad: Sequence[int] | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.batch, self.max_len, self.n_loop = batch, max_len, n_loop
        self.entries: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}
        self.length = 0
        cols = torch.arange(max_len, device=device)
        if pad is not None and any(pad):
            offsets = torch.as_tensor(list(pad), device=device).unsqueeze(1)  # (batch, 1)
            self.valid: torch.Tensor | None = cols.unsqueeze(0) >= offsets  # (batch, max_len)
            self.positions = (cols.unsqueeze(0) - offsets).clamp(min=0)  # (batch, max_len)
        else:
            self.valid = None
            self.positions = cols.unsqueeze(0).expand(batch, max_len)

    def update(self, key: Key, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (batch, heads, t, head_size) at [length, length + t); return all keys and values so far."""
        t = k.shape[2]
        if key not in self.entries:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.entries[key] = (k.new_empty(shape), v.new_empty(shape))
        k_buf, v_buf = self.entries[key]
        k_buf[:, :, self.length : self.length + t] = k
        v_buf[:, :, self.length : self.length + t] = v
        end = self.length + t
        return k_buf[:, :, :end], v_buf[:, :, :end]

    def attention_mask(self, t: int, device: torch.device) -> torch.Tensor | None:
        """Boolean (batch|1, 1, t, length + t) mask for t new queries, or None where plain causal SDPA is exact."""
        start = self.length
        if self.valid is None and (t == 1 or start == 0):
            return None
        keys = torch.arange(start + t, device=device)
        queries = torch.arange(start, start + t, device=device).unsqueeze(1)
        mask = (keys <= queries).unsqueeze(0)  # (1, t, start + t)
        if self.valid is not None:
            # padding is never attended to; a padding query attends to itself so its row is not all -inf (NaN)
            mask = mask & (self.valid[:, None, : start + t] | (keys == queries).unsqueeze(0))
        return mask.unsqueeze(1)


def _attend(block: Block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache, key: Key,
            mask: torch.Tensor | None) -> torch.Tensor:
    """`Block.forward` on new tokens, attending to the cached keys and values of this layer application."""
    attn = block.attention
    b, t, d = x.shape
    qkv = attn.query_key_value(block.input_layernorm(x)).view(b, t, attn.n_head, 3 * attn.head_size)
    qkv = apply_rotary(qkv, cos, sin)  # as Attention.forward does: q and k rotated inside the fused output
    q, k, v = qkv.transpose(1, 2).split(attn.head_size, dim=-1)  # (batch, heads, t, head_size) each
    k, v = cache.update(key, k, v)  # (batch, heads, length + t, head_size)
    causal = mask is None and t > 1
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (batch, heads, t, head_size)
    y = attn.dense(y.transpose(1, 2).reshape(b, t, d))
    return x + y + block.mlp(block.post_attention_layernorm(x))


def unrolled_forward(model: nn.Module, input_ids: torch.Tensor, n_loop: int | None = None,
                     cache: KVCache | None = None, record: Record | None = None) -> torch.Tensor:
    """Logits (batch, t, padded_vocab) of `input_ids` (batch, t), the new tokens after the cached ones.

    `record(name, h)` receives the hidden states (batch, t, n_embd): `h_emb`; for recursive models the
    prelude output `prelude_out`, the loop states `h0` .. `hK`, each core output `core_out{t}` (before
    the recurrence combines it), the coda input `h{K}` and `h_out`; for vanilla models `layer_{i}`."""
    spec = model.spec
    recursive = hasattr(model, "recurrence")
    if recursive:
        n_loop = spec.n_loop if n_loop is None else n_loop
        if n_loop < 1:
            raise ValueError(f"n_loop must be >= 1, got {n_loop}")
        if not spec.shares_core and n_loop != spec.n_loop:
            raise ValueError(f"a {spec.family} model has {spec.n_loop} distinct cores; n_loop cannot change")
    else:
        n_loop = None
    if cache is not None and cache.n_loop != (n_loop if recursive else None):
        raise ValueError(f"cache was filled with n_loop={cache.n_loop}, not {n_loop}")
    start = cache.length if cache is not None else 0
    t = input_ids.shape[1]
    if start + t > spec.block_size:
        raise ValueError(f"sequence length {start + t} exceeds block_size {spec.block_size}")
    note = record or (lambda name, h: None)

    h_emb = model.embed(input_ids)  # (batch, t, n_embd)
    note("h_emb", h_emb)
    cos, sin = model.rotary(start + t, h_emb.device, h_emb.dtype)  # (start + t, 1, 1, rotary_dims)
    if cache is None:
        cos, sin = cos[start:], sin[start:]
        mask = None
    else:
        pos = cache.positions[:, start : start + t].to(h_emb.device)  # (batch, t)
        cos, sin = cos[pos], sin[pos]  # (batch, t, 1, 1, rotary_dims): each row at its own positions
        mask = cache.attention_mask(t, h_emb.device)

    def run(stack: nn.ModuleList, stage: str, loop: int, h: torch.Tensor, per_layer: bool = False) -> torch.Tensor:
        for i, layer in enumerate(stack):
            if cache is None:
                h = layer(h, cos, sin)
            else:
                h = _attend(layer, h, cos, sin, cache, (stage, loop, i), mask)
            if per_layer:
                note(f"layer_{i + 1}", h)
        return h

    if not recursive:
        h = run(model.layers, "layers", 0, h_emb, per_layer=True)
    else:
        h_pre = run(model.prelude, "prelude", 0, h_emb)
        note("prelude_out", h_pre)
        h, ctx = model.recurrence.begin(h_emb, h_pre)
        note("h0", h)
        for step in range(n_loop):
            h_core = run(model.core_at(step), "core", step, h)
            note(f"core_out{step + 1}", h_core)
            h = model.recurrence.step(step, h, h_core, ctx)
            note(f"h{step + 1}", h)
        h = run(model.coda, "coda", 0, h)
    note("h_out", h)
    if cache is not None:
        cache.length = start + t
    return model.head(h)


def next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, vocab) -> (batch,): argmax when temperature <= 0, else a sample from softmax(logits / T),
    restricted to the top_k logits when given."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, n_loop: int | None = None, use_cache: bool = True,
             stop_ids: Sequence[int] = (), vocab_size: int | None = None, pad_id: int = 0,
             generator: torch.Generator | None = None) -> list[list[int]]:
    """New tokens for each prompt (a stop token ends a row and is not returned).

    Prompts are cut from the left to leave room for `max_new_tokens` within the model's block_size. Only
    ids below `vocab_size` are ever produced: pass the tokenizer's size with its added tokens (50,277 for
    GPT-NeoX-20B, above the spec's base 50,254); the default is every row of the padded embedding. With the cache,
    the prompts run as one left-padded batch, then one token per step; without it, every step is a full
    `model(ids)` forward per prompt (the reference the cache is checked against)."""
    spec = model.spec
    if max_new_tokens < 1:
        return [[] for _ in prompts]
    if max_new_tokens >= spec.block_size:
        raise ValueError(f"max_new_tokens {max_new_tokens} must be below the model's block_size {spec.block_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    vocab = vocab_size or spec.padded_vocab_size
    if vocab > spec.padded_vocab_size:
        raise ValueError(f"vocab_size {vocab} exceeds the model's embedding of {spec.padded_vocab_size} rows")
    keep = spec.block_size - max_new_tokens
    prompts = [list(p)[-keep:] for p in prompts]
    device = next(model.parameters()).device
    stops = set(stop_ids)
    recursive = hasattr(model, "recurrence")
    loop_kw = {"n_loop": n_loop} if recursive else {}

    if not use_cache:
        outputs = []
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            new: list[int] = []
            for _ in range(max_new_tokens):
                logits = model(ids, **loop_kw)[:, -1, :vocab]
                token = int(next_token(logits, temperature, top_k, generator))
                if token in stops:
                    break
                new.append(token)
                ids = torch.cat([ids, ids.new_tensor([[token]])], dim=1)
            outputs.append(new)
        return outputs

    longest = max(len(p) for p in prompts)
    pad = [longest - len(p) for p in prompts]
    ids = torch.tensor([[pad_id] * n + p for n, p in zip(pad, prompts)], device=device)  # (batch, longest)
    cache = KVCache(len(prompts), longest + max_new_tokens, n_loop=(n_loop or spec.n_loop) if recursive else None,
                    pad=pad, device=device)
    logits = unrolled_forward(model, ids, n_loop=n_loop, cache=cache)[:, -1, :vocab]
    outputs = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(max_new_tokens):
        tokens = next_token(logits, temperature, top_k, generator)  # (batch,)
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            if token in stops:
                done[row] = True
            else:
                outputs[row].append(token)
        if all(done) or step == max_new_tokens - 1:
            break
        logits = unrolled_forward(model, tokens.unsqueeze(1), n_loop=n_loop, cache=cache)[:, -1, :vocab]
    return outputs

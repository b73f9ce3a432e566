"""Sampling from any model family through the model's own forward and its KV cache.

`generate` runs the prompts as one left-padded batch through `model(ids, cache=..., attention_mask=...)`,
then one token per step; the cache (`meshctl.models.cache.KVCache`) holds one entry per layer
*application*, so a core looped K times has K. Without the cache every step is a full forward per prompt,
the reference the cache is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from meshctl.models.cache import KVCache


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
    # (batch, longest + max_new_tokens): 0 on each row's left padding; new tokens are all real
    valid = torch.ones(len(prompts), longest + max_new_tokens, dtype=torch.bool, device=device)
    for row, n in enumerate(pad):
        valid[row, :n] = False
    mask = valid if any(pad) else None
    # each row's token positions (rotary), counted from its first real token; made once, not per step
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0) if mask is not None else None
    cache = KVCache(model.layer_applications(n_loop), longest + max_new_tokens)

    def step(new: torch.Tensor) -> torch.Tensor:
        past = cache.get_seq_length()
        seen = past + new.shape[1]
        padding = {} if mask is None else {"attention_mask": mask[:, :seen], "position_ids": positions[:, past:seen]}
        return model(new, cache=cache, **padding, **loop_kw)[:, -1, :vocab]

    logits = step(ids)
    outputs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for i in range(max_new_tokens):
        tokens = next_token(logits, temperature, top_k, generator)  # (batch,)
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            if token in stops:
                done[row] = True
            else:
                outputs[row].append(token)
        if all(done) or i == max_new_tokens - 1:
            break
        logits = step(tokens.unsqueeze(1))
    return outputs

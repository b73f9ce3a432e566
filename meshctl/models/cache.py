"""The KV cache for generation, and the positions and attention mask of a chunk of new tokens.

The cache holds one entry per *application* of a layer, indexed in the order the forward applies them
(prelude, core layers of loop 0, of loop 1, ..., coda): a core layer looped K times has K entries, since
its inputs, and so its keys and values, differ per loop. `KVCache.update(k, v, layer_idx)` and
`get_seq_length()` are the calls `transformers`' `DynamicCache` answers too, so the exported model runs
this forward with the cache `generate()` hands it.

Torch only, relative imports only: this file ships verbatim in exported model directories
(`meshctl.models.export`).
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values (batch, heads, seq, head_size) of `n_layers` layer applications, preallocated to
    `max_len` positions at the first write of each."""

    def __init__(self, n_layers: int, max_len: int) -> None:
        self.n_layers, self.max_len = n_layers, max_len
        self.entries: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self.lengths = [0] * n_layers

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (batch, heads, t, head_size) to layer application `layer_idx`; all its keys and values."""
        if layer_idx >= self.n_layers:
            raise ValueError(f"layer application {layer_idx} but the cache holds {self.n_layers}: "
                             "a forward at another n_loop needs a cache made for it")
        start, t = self.lengths[layer_idx], k.shape[2]
        if start + t > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions, {start + t} were asked for")
        if self.entries[layer_idx] is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.entries[layer_idx] = (k.new_empty(shape), v.new_empty(shape))
        k_buf, v_buf = self.entries[layer_idx]  # type: ignore[misc]
        k_buf[:, :, start : start + t] = k
        v_buf[:, :, start : start + t] = v
        self.lengths[layer_idx] = start + t
        return k_buf[:, :, : start + t], v_buf[:, :, : start + t]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]


def attention_inputs(t: int, past: int, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
                     device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Rotary positions (batch, t) and a boolean SDPA mask (batch|1, 1, t, past + t) for t new tokens after
    `past` cached ones; None for either where the plain case holds (positions past .. past + t - 1; causal
    SDPA, or no mask for one new token).

    `attention_mask` (batch, past + t) marks real tokens with 1 and left padding with 0, as `transformers`
    passes it: each row's positions then count its real tokens only, and padding is never attended to."""
    padded = attention_mask is not None and not bool(attention_mask.all())
    positions = position_ids
    if positions is None and padded:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]  # type: ignore[union-attr]
    if not padded and (past == 0 or t == 1):
        return positions, None
    keys = torch.arange(past + t, device=device)
    queries = torch.arange(past, past + t, device=device).unsqueeze(1)  # (t, 1)
    mask = (keys <= queries).unsqueeze(0)  # (1, t, past + t)
    if padded:
        # a padding query attends to itself, so that its row is not all -inf (NaN)
        mask = mask & (attention_mask.bool()[:, None, -(past + t):] | (keys == queries))  # type: ignore[union-attr]
    return positions, mask.unsqueeze(1)

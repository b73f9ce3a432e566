"""State passing between core iterations: the MeSH paper's recurrence schemes (§3.1-3.2, App. E.2).

Each scheme turns the prelude output into the loop's first state h^(0) (`begin`) and the core output
h_m^(t) into the next state h^(t+1) (`step`). Per-iteration parameters live in lists indexed by step;
a model run with more loops than it was built for reuses the last step's parameters.

- additive (base, +residual, +anchor, +anchor*, and their sums, Eq. 1): h^(t+1) = h_m^(t) + sum(h_sup)
- static_comb (Ng & Wang 2024): h^(t+1) = a1 h_m^(t) + a2 h^(0) + a3 h_emb, trainable scalars per step,
  initialised (1, 0, 0) so training starts from `base`.
- dynamic_comb: the paper does not give its parameterisation. Here (a1, a2, a3) = Linear_t(h^(t)) per
  token, computed from the iteration's input state; weights initialised to 0 and bias to (1, 0, 0), so it
  also starts from `base`.
- mesh: the memory buffer with per-iteration write/read routers (Eqs. 2-5), described on `Mesh`.

Every scheme initialises itself (`reset_parameters`, after the model's generic init of linear layers). Each
acts per token, so a KV cache needs nothing from them. Torch only, relative imports only: this file ships
verbatim in exported model directories (`meshctl.models.export`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from typing import Any

ModelSpec = Any  # meshctl.models.ModelSpec or the exported config's view of it; not imported (see above)

# The supplementary terms h_sup of Eq. (1) each additive recurrence adds after every core iteration:
# "state" = h^(t) (the core input), "anchor" = h^(0) (prelude output), "emb" = h_emb.
ADDITIVE_TERMS: dict[str, tuple[str, ...]] = {
    "base": (),
    "residual": ("state",),
    "anchor": ("anchor",),
    "anchor_emb": ("emb",),
    "residual+anchor": ("state", "anchor"),
    "residual+anchor+anchor_emb": ("state", "anchor", "emb"),
    "anchor+anchor_emb": ("anchor", "emb"),
}


class StatePassing(nn.Module):
    def reset_parameters(self) -> None:
        """The scheme's own init, where it differs from N(0, std) weights and zero biases."""

    def begin(self, h_emb: torch.Tensor, h_pre: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Returns h^(0) and the scheme's per-forward context (local tensors, never module state)."""
        return h_pre, {"emb": h_emb, "anchor": h_pre}

    def step(self, t: int, h: torch.Tensor, h_core: torch.Tensor, ctx: dict) -> torch.Tensor:
        raise NotImplementedError


class Additive(StatePassing):
    def __init__(self, terms: tuple[str, ...]) -> None:
        super().__init__()
        self.terms = terms

    def step(self, t: int, h: torch.Tensor, h_core: torch.Tensor, ctx: dict) -> torch.Tensor:
        for term in self.terms:
            h_core = h_core + (h if term == "state" else ctx[term])
        return h_core


class StaticComb(StatePassing):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(spec.n_loop, 3))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.copy_(torch.tensor([1.0, 0.0, 0.0]).expand_as(self.alpha))  # (n_loop, 3)

    def step(self, t: int, h: torch.Tensor, h_core: torch.Tensor, ctx: dict) -> torch.Tensor:
        a = self.alpha[min(t, self.alpha.shape[0] - 1)].to(h_core.dtype)
        return a[0] * h_core + a[1] * ctx["anchor"] + a[2] * ctx["emb"]


class DynamicComb(StatePassing):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.mixers = nn.ModuleList(nn.Linear(spec.n_embd, 3) for _ in range(spec.n_loop))

    def reset_parameters(self) -> None:
        for mixer in self.mixers:
            nn.init.zeros_(mixer.weight)
            with torch.no_grad():
                mixer.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))

    def step(self, t: int, h: torch.Tensor, h_core: torch.Tensor, ctx: dict) -> torch.Tensor:
        a = self.mixers[min(t, len(self.mixers) - 1)](h)  # (batch, seq, 3)
        return a[..., 0:1] * h_core + a[..., 1:2] * ctx["anchor"] + a[..., 2:3] * ctx["emb"]


class Mesh(StatePassing):
    """Memory-as-State-Highways: a buffer of B slots per token, slot 0 = h_emb, the others zero.

    Routers: `write_routers[0]`/`read_routers[0]` are the transitional pair applied to the prelude output;
    `[t + 1]` belong to core iteration t. Each is Linear(D, B) with bias, softmax over slots per token,
    both queried by the iteration's input state h^(t). Writes are additive, m_b += h_m * w_write_b, and
    each read mixes the updated buffer, h^(t+1) = sum_b m_b * w_read_b. The coda gets the last read.

    The buffer is kept as its write history instead of a (batch, B, seq, D) tensor: since writes only
    add, sum_b w_read_b m_b = sum_s <w_read, w_write^(s)> h_s over every value h_s written so far
    (App. D, Eq. 7). That is exact, and backward stores per-token scalars instead of B copies of the state.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.slots = spec.slots
        n = spec.n_loop + 1
        self.write_routers = nn.ModuleList(nn.Linear(spec.n_embd, self.slots) for _ in range(n))
        self.read_routers = nn.ModuleList(nn.Linear(spec.n_embd, self.slots) for _ in range(n))

    def _route(self, i: int, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = min(i, len(self.write_routers) - 1)
        write, read = self.write_routers[i], self.read_routers[i]
        # Both routers in one matmul: the (batch, seq, D) query is read once, and backward makes one
        # input-gradient matmul instead of two plus their sum. Softmax per router over the B slots.
        logits = F.linear(query, torch.cat((write.weight, read.weight)), torch.cat((write.bias, read.bias)))
        weights = F.softmax(logits.unflatten(-1, (2, self.slots)), dim=-1, dtype=torch.float32).to(query.dtype)
        return weights[..., 0, :], weights[..., 1, :]  # (batch, seq, B) each

    @staticmethod
    def _read(history: list[tuple[torch.Tensor, torch.Tensor | None]], w_read: torch.Tensor) -> torch.Tensor:
        out = history[0][0] * w_read[..., :1]  # the initial embedding sits in slot 0 with weight one
        for value, w_write in history[1:]:
            # one fused multiply-add per value read (not a multiply, then an add)
            out = torch.addcmul(out, value, (w_read * w_write).sum(-1, keepdim=True))
        return out  # (batch, seq, D)

    def begin(self, h_emb: torch.Tensor, h_pre: torch.Tensor) -> tuple[torch.Tensor, dict]:
        w_write, w_read = self._route(0, h_pre)
        history: list[tuple[torch.Tensor, torch.Tensor | None]] = [(h_emb, None), (h_pre, w_write)]
        return self._read(history, w_read), {"history": history}

    def step(self, t: int, h: torch.Tensor, h_core: torch.Tensor, ctx: dict) -> torch.Tensor:
        w_write, w_read = self._route(t + 1, h)
        ctx["history"].append((h_core, w_write))
        return self._read(ctx["history"], w_read)

    def buffer(self, ctx: dict) -> torch.Tensor:
        """The explicit buffer M (batch, B, seq, D) after the writes so far, for probes and tests."""
        history = ctx["history"]
        h_emb = history[0][0]
        m = torch.zeros(h_emb.shape[0], self.slots, *h_emb.shape[1:], dtype=h_emb.dtype, device=h_emb.device)
        m[:, 0] = h_emb
        for value, w_write in history[1:]:
            m = m + w_write.permute(0, 2, 1).unsqueeze(-1) * value.unsqueeze(1)
        return m


def build_recurrence(spec: ModelSpec) -> StatePassing:
    if spec.recurrence == "mesh":
        return Mesh(spec)
    if spec.recurrence == "static_comb":
        return StaticComb(spec)
    if spec.recurrence == "dynamic_comb":
        return DynamicComb(spec)
    return Additive(ADDITIVE_TERMS[spec.recurrence])

"""The LM head and its cross-entropy as one step: mean token NLL of softmax(x W^T) without keeping logits.

Why: through autograd, `F.cross_entropy(x @ W.T, t)` keeps the (tokens, vocab) logits and log-probs for
backward, then allocates a zero-filled gradient of that size, scatters into it and runs log_softmax's
backward (a second exp over every logit). At vocab 8k-50k that is the largest activation of a training
step and, on CPU, several percent of its time. Here each chunk of tokens is projected, its log-softmax
taken once, and the gradient of the logits (softmax - onehot) formed in place and pushed through the
two matmuls at once; only the gradients of x and W (already the sizes of x and W) wait for backward.
The weight gradient is accumulated in vocab slices: on CPU the (50304, 768) weight gradient from 256
tokens ran at 0.45 of a 2048^3 matmul's rate as one GEMM, at 0.9-1.0 in 8k-row slices.

The numbers are those of `F.cross_entropy(logits.float(), t)`: logits are made in the input dtype (bf16
under autocast), the softmax and NLL in fp32.
"""

from __future__ import annotations

import torch

LOGITS_BUDGET = 256 * 2**20  # bytes of fp32 logits per token chunk (bounds the transient at long context)
VOCAB_SLICE = 8192  # rows of the weight gradient per GEMM


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, with_grad: bool) -> torch.Tensor:
        n, vocab = x.shape[0], weight.shape[0]
        rows = max(1, LOGITS_BUDGET // (4 * vocab))
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if with_grad else None
        grad_w = torch.empty_like(weight) if with_grad else None
        for start in range(0, n, rows):
            xc, tc = x[start : start + rows], targets[start : start + rows]
            logp = torch.log_softmax(torch.mm(xc, weight.t()).float(), dim=1)  # (chunk, vocab)
            picked = logp.gather(1, tc[:, None])
            total -= picked.sum()
            if not with_grad:
                continue
            grad_logits = logp.exp_()  # softmax, in place
            grad_logits.scatter_(1, tc[:, None], picked.exp() - 1.0)  # - onehot
            grad_logits = grad_logits.to(x.dtype)  # of the sum over tokens; backward divides by n
            torch.mm(grad_logits, weight, out=grad_x[start : start + rows])
            for v in range(0, vocab, VOCAB_SLICE):
                rows_of_w, g = grad_w[v : v + VOCAB_SLICE], grad_logits[:, v : v + VOCAB_SLICE].t()
                torch.mm(g, xc, out=rows_of_w) if start == 0 else rows_of_w.addmm_(g, xc)
        ctx.grads, ctx.n = (grad_x, grad_w), n
        return total / n

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        if ctx.grads is None:
            raise RuntimeError("backward through LinearCrossEntropy a second time: its gradients are spent")
        (grad_x, grad_w), ctx.grads = ctx.grads, None  # scaled in place, so released here
        scale = (grad_loss / ctx.n).to(grad_x.dtype)
        return grad_x.mul_(scale), grad_w.mul_(scale), None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of -log softmax(x W^T)[target]: x (tokens, d), weight (vocab, d), targets (tokens,).

    Under autocast the matmuls run in its dtype (as `nn.Linear` would) and the gradient of `weight` is
    returned in the weight's dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
    with_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    with torch.autocast(device, enabled=False):
        return LinearCrossEntropy.apply(x, weight, targets, with_grad)

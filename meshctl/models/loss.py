"""The LM head and its cross-entropy as one step: mean token NLL of softmax(x W^T) without keeping logits.

Why: through autograd, `F.cross_entropy(x @ W.T, t)` keeps the (tokens, vocab) logits and log-probs for
backward, then allocates a zero-filled gradient of that size, scatters into it and runs log_softmax's
backward (a second exp over every logit). At vocab 8k-50k that is the largest activation of a training
step and, on CPU, several percent of its time. Here each chunk of tokens is projected, its log-softmax
taken once, and the gradient of the logits (softmax - onehot) formed in place and pushed through the
two matmuls at once; only the gradients of x and W (already the sizes of x and W) wait for backward.
The weight gradient is accumulated in vocab slices: on CPU the (50304, 768) weight gradient from 256
tokens ran at 0.45 of a 2048^3 matmul's rate as one GEMM, at 0.9-1.0 in 8k-row slices.

The numbers are those of `F.cross_entropy(logits.float(), t)`: logits are made in the compute dtype (bf16
under autocast), the softmax and NLL in fp32. In bf16 the weight gradient is summed over token chunks in
fp32 and cast once at the end: summing it in bf16 chunk by chunk lost a rounding per chunk (relative error
against fp64 0.5% at 16 chunks and 1.1% at 64, against 0.24% for plain autocast); the paper's micro-batches
make 13-49 chunks. Under autocast the fp32 master weight comes in and its gradient goes out in fp32.
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
        w = weight.to(x.dtype)  # the compute copy (a no-op in fp32)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if with_grad else None
        # summed over chunks in fp32 (fp64 for fp64 inputs) whatever the compute dtype
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        grad_w = torch.empty(weight.shape, dtype=acc_dtype, device=x.device) if with_grad else None
        in_place = x.dtype == acc_dtype  # GEMMs accumulate straight into grad_w
        for start in range(0, n, rows):
            xc, tc = x[start : start + rows], targets[start : start + rows]
            logp = torch.log_softmax(torch.mm(xc, w.t()).float(), dim=1)  # (chunk, vocab)
            picked = logp.gather(1, tc[:, None])
            total -= picked.sum()
            if not with_grad:
                continue
            grad_logits = logp.exp_()  # softmax, in place
            grad_logits.scatter_(1, tc[:, None], picked.exp() - 1.0)  # - onehot
            grad_logits = grad_logits.to(x.dtype)  # of the sum over tokens; backward divides by n
            torch.mm(grad_logits, w, out=grad_x[start : start + rows])
            for v in range(0, vocab, VOCAB_SLICE):
                rows_of_w, g = grad_w[v : v + VOCAB_SLICE], grad_logits[:, v : v + VOCAB_SLICE].t()
                if not in_place:  # one GEMM in the compute dtype per chunk, the sum over chunks in fp32
                    product = g @ xc
                    rows_of_w.copy_(product) if start == 0 else rows_of_w.add_(product)
                elif start == 0:
                    torch.mm(g, xc, out=rows_of_w)
                else:
                    rows_of_w.addmm_(g, xc)
        ctx.grads, ctx.n = (grad_x, grad_w), n
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        if ctx.grads is None:
            raise RuntimeError("backward through LinearCrossEntropy a second time: its gradients are spent")
        (grad_x, grad_w), ctx.grads = ctx.grads, None  # scaled in place, so released here
        scale = grad_loss / ctx.n
        grad_w = grad_w.mul_(scale.to(grad_w.dtype)).to(ctx.weight_dtype)  # the one cast
        return grad_x.mul_(scale.to(grad_x.dtype)), grad_w, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of -log softmax(x W^T)[target]: x (tokens, d), weight (vocab, d), targets (tokens,).

    Under autocast the matmuls run in its dtype (as `nn.Linear` would); the gradient of `weight` is summed
    in fp32 and returned in the weight's own dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        x = x.to(torch.get_autocast_dtype(device))
    with_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    with torch.autocast(device, enabled=False):
        return LinearCrossEntropy.apply(x, weight, targets, with_grad)

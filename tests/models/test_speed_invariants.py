"""Invariants of the model code's speed-ups (no timings here: those are benchmarks/speed.py's)."""

from __future__ import annotations

import pytest
import torch

import meshctl.models.loss as loss_module
from meshctl.models import ModelSpec, build
from meshctl.models.block import RotaryCache, Rotary, apply_rotary
from meshctl.models.loss import linear_cross_entropy

SPECS = [
    ModelSpec(n_layer=1, n_embd=128, n_head=2, vocab_size=300),  # Pythia-like: 16 of 64 head dims rotated
    ModelSpec(n_layer=1, n_embd=96, n_head=4, vocab_size=300, rotary_pct=0.5),  # 12 of 24
]


def reference_rotary(x: torch.Tensor, seq: int, spec: ModelSpec) -> torch.Tensor:
    """GPT-NeoX / transformers' rotate_half form on one of q or k: (batch, heads, seq, head_size).
    Tables in float32 as theirs, then cast to x's dtype."""
    dims = spec.rotary_dims
    inv_freq = 1.0 / (spec.rotary_base ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims))
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    rot, rest = x[..., :dims], x[..., dims:]
    rotated = torch.cat((-rot[..., dims // 2 :], rot[..., : dims // 2]), dim=-1)
    return torch.cat((rot * emb.cos().to(x.dtype) + rotated * emb.sin().to(x.dtype), rest), dim=-1)


def test_rotary_cache_serves_equal_tables_from_one_store() -> None:
    cache = RotaryCache(SPECS[0])
    cos, sin = cache(32, torch.device("cpu"), torch.float32)
    again_cos, again_sin = cache(32, "cpu", torch.float32)
    assert again_cos.data_ptr() == cos.data_ptr() and torch.equal(again_cos, cos) and torch.equal(again_sin, sin)
    for seq in (16, 32, 48):  # shorter: a view of the stored rows; longer: computed once and stored
        fresh_cos, fresh_sin = RotaryCache(SPECS[0])(seq, "cpu", torch.float32)
        got_cos, got_sin = cache(seq, "cpu", torch.float32)
        assert got_cos.shape == (seq, 1, 1, SPECS[0].rotary_dims)
        assert torch.equal(got_cos, fresh_cos) and torch.equal(got_sin, fresh_sin)
    assert len(cache._tables) == 1 and cache._tables[(torch.device("cpu"), torch.float32)][0].shape[0] == 48
    assert cache(32, "cpu", torch.float64)[0].dtype == torch.float64


def test_tables_first_made_under_inference_mode_serve_training() -> None:
    model = build(ModelSpec(n_layer=1, n_embd=64, n_head=2, vocab_size=300), seed=0)
    ids = torch.randint(0, 300, (2, 8))
    with torch.inference_mode():
        model(ids)
    model(ids).sum().backward()  # the cached tables must not be inference tensors
    assert model.layers[0].attention.query_key_value.weight.grad is not None


def test_rotary_matches_rotate_half_forward_and_backward() -> None:
    for spec in SPECS:
        b, t, h, hs = 2, 7, spec.n_head, spec.head_size
        qkv = torch.randn(b, t, h, 3 * hs, dtype=torch.float64, requires_grad=True)
        cos, sin = RotaryCache(spec)(t, "cpu", torch.float64)
        q, k, v = apply_rotary(qkv, cos, sin).transpose(1, 2).split(hs, dim=-1)
        rq, rk, rv = qkv.transpose(1, 2).split(hs, dim=-1)
        expected = (reference_rotary(rq, t, spec), reference_rotary(rk, t, spec), rv)
        for ours, theirs in zip((q, k, v), expected):
            torch.testing.assert_close(ours, theirs)
        grads = [torch.randn_like(x) for x in expected]
        ours_grad = torch.autograd.grad((q, k, v), qkv, grads)[0]
        theirs_grad = torch.autograd.grad(expected, qkv, grads)[0]
        torch.testing.assert_close(ours_grad, theirs_grad)
        assert torch.autograd.gradcheck(lambda x: Rotary.apply(x, cos, sin), (qkv,))


def test_no_rotary_dims_passes_qkv_through() -> None:
    spec = ModelSpec(n_layer=1, n_embd=64, n_head=2, vocab_size=300, rotary_pct=0.0)
    qkv = torch.randn(1, 3, 2, 96)
    cos, sin = RotaryCache(spec)(3, "cpu", torch.float32)
    assert apply_rotary(qkv, cos, sin) is qkv


def reference_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy((x @ weight.t()).float(), targets)


@pytest.mark.parametrize("budget, vocab_slice", [(None, None), (4 * 300 * 5, 128)])  # one chunk; 5-token chunks
def test_fused_head_loss_matches_cross_entropy_and_its_gradients(monkeypatch, budget, vocab_slice) -> None:
    if budget is not None:  # several token chunks, and weight-gradient slices that do not divide the vocab
        monkeypatch.setattr(loss_module, "LOGITS_BUDGET", budget)
        monkeypatch.setattr(loss_module, "VOCAB_SLICE", vocab_slice)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(23, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(300, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.randint(0, 300, (23,), generator=gen)
    ours = linear_cross_entropy(x, weight, targets)
    (2.5 * ours).backward()  # the upstream gradient scales both
    ours_grads = x.grad.clone(), weight.grad.clone()
    x.grad = weight.grad = None
    theirs = reference_loss(x, weight, targets)
    (2.5 * theirs).backward()
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_grads, (x.grad, weight.grad))
    with torch.no_grad():  # evaluation: the same value, no gradient work
        torch.testing.assert_close(linear_cross_entropy(x, weight, targets), ours)


def test_fused_head_loss_refuses_a_second_backward() -> None:
    x = torch.randn(4, 8, requires_grad=True)
    loss = linear_cross_entropy(x * 1.0, torch.randn(50, 8), torch.randint(0, 50, (4,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_fused_head_loss_under_bf16_autocast_matches_the_linear_layer() -> None:
    """Under autocast the logits are made in bf16, as nn.Linear would; softmax and NLL in fp32."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 64, generator=gen, requires_grad=True)
    weight = torch.randn(500, 64, generator=gen, requires_grad=True)
    targets = torch.randint(0, 500, (32,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(x, weight, targets)
        theirs = torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, weight).float(), targets)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    ours.backward()
    assert weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def _relative_error(grad: torch.Tensor, exact: torch.Tensor) -> float:
    return float((grad.double() - exact).norm() / exact.norm())


@pytest.mark.parametrize("chunks", [16, 64])
def test_bf16_head_weight_gradient_is_no_worse_than_plain_autocast(monkeypatch, chunks) -> None:
    """Summed over many token chunks, the weight gradient keeps fp32 sums: its error against fp64 is not
    above that of one autocast linear layer (summing chunk results in bf16 gave 2-5x more)."""
    gen = torch.Generator().manual_seed(3)
    n, d, vocab = 1024, 64, 2048
    x, weight = torch.randn(n, d, generator=gen), torch.randn(vocab, d, generator=gen) * 0.05
    targets = torch.randint(0, vocab, (n,), generator=gen)
    exact = weight.double().requires_grad_()
    torch.nn.functional.cross_entropy(x.double() @ exact.t(), targets).backward()

    def grad_under_autocast(loss_fn) -> torch.Tensor:
        w = weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_fn(x.clone().requires_grad_(), w).backward()
        assert w.grad.dtype == torch.float32
        return w.grad

    plain = grad_under_autocast(lambda x_, w: torch.nn.functional.cross_entropy(
        torch.nn.functional.linear(x_, w).float(), targets))
    monkeypatch.setattr(loss_module, "LOGITS_BUDGET", 4 * vocab * (n // chunks))  # `chunks` token chunks
    ours = grad_under_autocast(lambda x_, w: linear_cross_entropy(x_, w, targets))
    assert _relative_error(ours, exact.grad) <= _relative_error(plain, exact.grad) < 0.005


@pytest.mark.parametrize("recurrence", [None, "mesh"])
def test_model_loss_equals_cross_entropy_of_its_logits(recurrence) -> None:
    spec = ModelSpec(n_layer=6, n_embd=64, n_head=2, vocab_size=300)
    if recurrence:
        spec = spec.variant(family="recursive", structure="1+2R2+1", recurrence=recurrence)
    model = build(spec, seed=0).double()
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(2))
    model(ids[:, :-1], targets=ids[:, 1:]).backward()
    fused = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    logits = model(ids[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, msg=name)

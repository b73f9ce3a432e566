"""Parity with `transformers`' GPTNeoXForCausalLM on the same weights (fp32)."""

from __future__ import annotations

import pytest
import torch

from meshctl.models import ModelSpec, build, export_hf

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    "spec",
    [
        # Pythia-shaped heads (head_size 64, rotary on 16 dims) with the sqrt(d) embedding scale folded on export
        ModelSpec(n_layer=3, n_embd=128, n_head=2, vocab_size=1000, block_size=64),
        # no scale, odd vocab (padded), 4 heads of 32 with rotary_pct 0.5, wider MLP
        ModelSpec(
            n_layer=2, n_embd=128, n_head=4, vocab_size=777, rotary_pct=0.5, intermediate_size=384,
            scale_embeddings=False, block_size=64,
        ),
    ],
    ids=["pythia-like", "variant"],
)
def test_logits_match_transformers(spec: ModelSpec, tmp_path) -> None:
    model = build(spec, seed=3).eval()
    export_hf(model, tmp_path)
    hf = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    assert hf.config.vocab_size == spec.padded_vocab_size
    ids = torch.randint(0, spec.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.shape == theirs.shape == (2, 48, spec.padded_vocab_size)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_export_refuses_recursive_models(tmp_path) -> None:
    model = build("tiny-64-1+1R2+1-mesh", seed=0)
    with pytest.raises(ValueError, match="only vanilla models export"):
        export_hf(model, tmp_path)
    assert not any(tmp_path.iterdir())

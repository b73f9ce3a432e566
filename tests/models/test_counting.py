"""Analytic counts equal the modules' and the paper's numbers (Table 5, §2)."""

from __future__ import annotations

import pytest
import torch

from meshctl.models import PRESETS, build, count_params, flops_per_token, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_counts_equal_the_module(name: str) -> None:
    spec = PRESETS[name]
    with torch.device("meta"):  # shapes only: the 1.4B presets cost no memory
        model = build(spec)
    counts = count_params(spec)
    stored = sum(p.numel() for p in model.parameters())
    embedding = model.embed_in.weight.numel() + model.embed_out.weight.numel()
    assert counts.unique == counts.total == stored
    assert counts.embedding == embedding
    assert counts.non_embedding == stored - embedding
    routers = sum(p.numel() for p in model.recurrence.parameters()) if hasattr(model, "recurrence") else 0
    assert counts.recurrence == routers


def test_paper_table5_pythia_1_4b() -> None:
    vanilla = count_params(get_preset("pythia-1.4b"))
    base = count_params(get_preset("pythia-1.4b-4+8R2+4-base"))
    mesh = count_params(get_preset("pythia-1.4b-4+8R2+4-mesh"))
    assert vanilla.non_embedding == 1_208_602_624
    assert base.non_embedding == 805_736_448
    assert mesh.non_embedding == 805_797_918
    assert mesh.recurrence == 61_470
    # matched compute: the recursive model applies as many layers as vanilla
    assert base.unrolled_non_embedding == vanilla.non_embedding
    assert round(100 * (base.non_embedding / vanilla.non_embedding - 1), 3) == -33.333


def test_pythia_160m_total_and_paper_derived_counts() -> None:
    assert count_params(get_preset("pythia-160m")).total == 162_322_944
    derived = {  # mesh-paper.md §2: non-embedding of the base variant, router params of the MeSH variant
        ("pythia-160m", "2+4R2+2"): (56_704_512, 23_070),
        ("pythia-410m", "4+8R2+4"): (201_541_632, 30_750),
        ("pythia-410m", "3+6R3+3"): (151_156_736, 49_200),
        ("pythia-1b", "3+5R2+3"): (553_945_088, 61_470),
    }
    for (scale, structure), (non_emb, routers) in derived.items():
        assert count_params(get_preset(f"{scale}-{structure}-base")).non_embedding == non_emb
        assert count_params(get_preset(f"{scale}-{structure}-mesh")).recurrence == routers


def test_flop_formulas_match_reference_values() -> None:
    # shared/reference/pythia-data-flops.md §4.4 at T = 2048 (GFLOPs/token)
    spec = get_preset("pythia-160m")
    assert flops_per_token(spec, 2048, "6N") == 6 * 85_056_000
    assert flops_per_token(spec, 2048, "6N+attn") / 1e9 == pytest.approx(0.624, abs=5e-4)
    assert flops_per_token(spec, 2048, "palm") / 1e9 == pytest.approx(0.969, abs=5e-4)
    # a recursive model at matched compute costs the same FLOPs per token, routers aside
    base = get_preset("pythia-410m-3+6R3+3-base")
    assert flops_per_token(base, 2048, "palm") == flops_per_token(get_preset("pythia-410m"), 2048, "palm")
    with pytest.raises(ValueError, match="unknown FLOP formula"):
        flops_per_token(spec, 2048, "9N")


@pytest.mark.parametrize("name,total", [("pythia-160m", 162_322_944), ("pythia-1.4b", 1_414_647_808),
                                        ("pythia-2.8b", 2_775_208_960), ("pythia-6.9b", 6_857_302_016)])
def test_pythia_totals_equal_transformers_gptneox(name: str, total: int) -> None:
    transformers = pytest.importorskip("transformers")
    spec = get_preset(name)
    config = transformers.GPTNeoXConfig(
        vocab_size=spec.padded_vocab_size, hidden_size=spec.n_embd, num_hidden_layers=spec.n_layer,
        num_attention_heads=spec.n_head, intermediate_size=4 * spec.n_embd, rotary_pct=spec.rotary_pct,
        use_parallel_residual=True, tie_word_embeddings=False,
    )
    with torch.device("meta"):  # shapes only: 6.9B parameters cost no memory
        hf = transformers.GPTNeoXForCausalLM(config)
    assert sum(p.numel() for p in hf.parameters()) == count_params(spec).total == total
    assert spec.padded_vocab_size == (50432 if name == "pythia-6.9b" else 50304)  # HF's configs

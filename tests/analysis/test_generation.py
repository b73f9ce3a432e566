"""The KV cache (one entry per layer application) against full forwards, and sampling."""

from __future__ import annotations

import pytest
import torch

from meshctl.analysis.generation import KVCache, generate, unrolled_forward
from meshctl.models import build

BASE = {"n_embd": 64, "n_head": 4, "vocab_size": 300, "block_size": 96, "init_std": 0.1}
FAMILIES = {
    "vanilla": {"n_layer": 3},
    "recursive-residual": {"family": "recursive", "structure": "1+1R2+1", "recurrence": "residual"},
    "mesh": {"family": "recursive", "structure": "1+2R3+1", "recurrence": "mesh"},
    "dynamic_comb": {"family": "recursive", "structure": "1+1R2+1", "recurrence": "dynamic_comb"},
    "vanilla_mesh": {"family": "vanilla_mesh", "structure": "1+1+1+1", "recurrence": "mesh"},
}


def make(name: str) -> torch.nn.Module:
    model = build({**BASE, **FAMILIES[name]}, seed=0).eval()
    with torch.no_grad():  # routers and mixers start near uniform/identity: perturb them so they matter
        for pname, p in model.named_parameters():
            if "router" in pname or "mixers" in pname:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    return model


def loops_of(model: torch.nn.Module) -> int | None:
    return model.spec.n_loop if hasattr(model, "recurrence") else None


@pytest.mark.parametrize("name", list(FAMILIES))
def test_uncached_unrolled_forward_is_the_model(name: str) -> None:
    model = make(name)
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(unrolled_forward(model, ids), model(ids))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cached_chunks_match_the_full_forward(name: str) -> None:
    model = make(name)
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    cache = KVCache(2, 24, loops_of(model))
    with torch.no_grad():
        full = model(ids)
        parts = [unrolled_forward(model, ids[:, a:b], cache=cache) for a, b in ((0, 7), (7, 8), (8, 13), (13, 20))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vanilla", "recursive-residual", "mesh"])
def test_cached_greedy_decoding_gives_the_uncached_tokens(name: str) -> None:
    model = make(name)
    prompts = [[5, 6, 7, 8, 9, 10], [42], list(range(100, 130))]  # left padding of 24 and 29 tokens
    cached = generate(model, prompts, 24)
    uncached = generate(model, prompts, 24, use_cache=False)
    assert cached == uncached
    assert all(len(row) == 24 for row in cached)
    assert len({t for row in cached for t in row}) > 5, "degenerate test: the model repeats one token"


def test_a_looped_layer_has_one_cache_entry_per_loop_and_depth_can_change() -> None:
    model = make("mesh")  # prelude 1, core 2 layers x 3 loops, coda 1
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    for n_loop in (3, 5):
        cache = KVCache(1, 12, n_loop)
        with torch.no_grad():
            a = unrolled_forward(model, ids[:, :5], n_loop=n_loop, cache=cache)
            b = unrolled_forward(model, ids[:, 5:], n_loop=n_loop, cache=cache)
            full = model(ids, n_loop=n_loop)
        core = sorted(k for k in cache.entries if k[0] == "core")
        assert core == [("core", t, i) for t in range(n_loop) for i in range(2)]
        assert len(cache.entries) == 1 + 2 * n_loop + 1
        torch.testing.assert_close(torch.cat([a, b], dim=1), full, atol=1e-5, rtol=1e-5)
    assert generate(model, [[1, 2, 3]], 8, n_loop=5) == generate(model, [[1, 2, 3]], 8, n_loop=5, use_cache=False)
    with pytest.raises(ValueError, match="n_loop"):
        unrolled_forward(model, ids, n_loop=4, cache=KVCache(1, 12, 3))


def test_sampling_is_seeded_and_stays_in_the_tokenizer_vocab() -> None:
    model = make("recursive-residual")  # padded vocab 384 > vocab 300

    def sample(seed: int, **kw) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed)
        return generate(model, [[1, 2, 3], [4]], 30, temperature=1.5, generator=g, vocab_size=300, **kw)

    assert sample(0) == sample(0) != sample(1)
    assert all(0 <= t < 300 for row in sample(2) for t in row)
    assert generate(model, [[1, 2, 3]], 10, temperature=1.0, top_k=1) == generate(model, [[1, 2, 3]], 10)


def test_stop_tokens_end_rows_and_long_prompts_are_cut_from_the_left() -> None:
    model = make("vanilla")
    free = generate(model, [[7, 8, 9]], 12)[0]
    stopped = generate(model, [[7, 8, 9]], 12, stop_ids=[free[3]])[0]
    assert stopped == free[: free.index(free[3])]
    long = list(range(1, 200))  # block_size 96
    assert generate(model, [long], 6) == generate(model, [long[-90:]], 6) == generate(model, [long], 6, use_cache=False)


@pytest.mark.parametrize("use_cache", [True, False])
def test_sampling_reaches_every_tokenizer_id_above_the_base_vocabulary(use_cache) -> None:
    """A Pythia-vocabulary model (base 50,254, 50,304 rows) can emit GPT-NeoX's added ids up to 50,276,
    and never a padding row when given the tokenizer's size."""
    model = build({"n_layer": 1, "n_embd": 64, "n_head": 4, "block_size": 32}, seed=0).eval()
    assert model.spec.vocab_size == 50254 and model.spec.padded_vocab_size == 50304
    with torch.no_grad():  # the head sees a constant state and scores one added id and one padding row highest
        model.final_layer_norm.weight.zero_()
        model.final_layer_norm.bias.fill_(1.0)
        model.embed_out.weight.zero_()
        model.embed_out.weight[50276] = 1.0
        model.embed_out.weight[50290] = 2.0
    kw = {"use_cache": use_cache}
    assert generate(model, [[5, 6]], 3, vocab_size=50277, **kw) == [[50276] * 3]
    assert generate(model, [[5, 6]], 2, **kw) == [[50290] * 2]  # default: every embedding row
    with pytest.raises(ValueError, match="exceeds the model's embedding of 50304 rows"):
        generate(model, [[5]], 1, vocab_size=50305, **kw)

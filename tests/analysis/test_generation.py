"""The model's forward with a KV cache (one entry per layer application) against full forwards, and sampling."""

from __future__ import annotations

import pytest
import torch

from meshctl.analysis.generation import generate
from meshctl.models.cache import KVCache
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


@pytest.mark.parametrize("name", list(FAMILIES))
def test_recording_the_states_leaves_the_forward_unchanged(name: str) -> None:
    model = make(name)
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    states: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        assert torch.equal(model(ids, record=states.__setitem__), model(ids))
    # vanilla: h_emb, layer_1..3, h_out; recursive: h_emb, prelude_out, h0..hK, core_out1..K, h_out
    expected = 5 if name == "vanilla" else 4 + 2 * model.spec.n_loop
    assert len(states) == expected and states["h_emb"].shape == states["h_out"].shape == (2, 17, 64)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cached_chunks_match_the_full_forward(name: str) -> None:
    model = make(name)
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    cache = KVCache(model.layer_applications(), 24)
    with torch.no_grad():
        full = model(ids)
        parts = [model(ids[:, a:b], cache=cache) for a, b in ((0, 7), (7, 8), (8, 13), (13, 20))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vanilla", "mesh"])
def test_left_padded_rows_see_their_own_positions_only(name: str) -> None:
    """A row left-padded by 5 tokens, with its attention mask, gives the logits of the row alone."""
    model = make(name)
    row = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.full((1, 5), 7), row], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], dim=1)
    cache = KVCache(model.layer_applications(), 16)
    with torch.no_grad():
        alone = model(row)
        first = model(padded[:, :10], cache=cache, attention_mask=mask[:, :10])
        rest = model(padded[:, 10:], cache=cache, attention_mask=mask)
    torch.testing.assert_close(torch.cat([first, rest], dim=1)[:, 5:], alone, atol=1e-5, rtol=1e-5)


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
        cache = KVCache(model.layer_applications(n_loop), 12)
        applied: list[int] = []
        hooks = [m.register_forward_pre_hook(lambda mod, args: applied.append(args[4]))
                 for m in [*model.prelude, *model.core, *model.coda]]
        with torch.no_grad():
            a = model(ids[:, :5], n_loop=n_loop, cache=cache)
            b = model(ids[:, 5:], n_loop=n_loop, cache=cache)
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            full = model(ids, n_loop=n_loop)
        # prelude, each loop's two core layers, coda: one entry each, in the order they are applied
        assert cache.n_layers == 1 + 2 * n_loop + 1 and applied == list(range(cache.n_layers)) * 2
        assert all(entry is not None for entry in cache.entries) and set(cache.lengths) == {12}
        core_keys = [cache.entries[1 + i][0] for i in range(2 * n_loop)]
        assert not any(torch.equal(core_keys[0], k) for k in core_keys[2::2])  # loops differ: one entry each
        torch.testing.assert_close(torch.cat([a, b], dim=1), full, atol=1e-5, rtol=1e-5)
    assert generate(model, [[1, 2, 3]], 8, n_loop=5) == generate(model, [[1, 2, 3]], 8, n_loop=5, use_cache=False)
    with pytest.raises(ValueError, match="n_loop"):
        model(ids, n_loop=4, cache=KVCache(model.layer_applications(3), 12))


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



def test_blocks_with_cache_arguments_still_compile_fullgraph() -> None:
    """Training compiles each Block with fullgraph (a graph break raises): the cache, mask and layer-index
    arguments must not break it, also after the recompile with dynamic shapes a second length makes."""
    from meshctl.models.block import Block

    model = make("mesh")
    batches = [torch.randint(0, 300, (2, n), generator=torch.Generator().manual_seed(n)) for n in (16, 24, 9)]
    with torch.no_grad():
        expected = [model(ids) for ids in batches]
    torch._dynamo.reset()
    for block in (m for m in model.modules() if isinstance(m, Block)):
        block.compile(fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for ids, logits in zip(batches, expected):
            torch.testing.assert_close(model(ids), logits, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()

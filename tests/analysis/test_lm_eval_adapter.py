"""The lm-eval adapter scores exactly what the model computes. lm-eval is the `eval` extra: these tests
import it unconditionally and fail, not skip, where it is missing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from meshctl.analysis.lm_eval_adapter import MeshctlLM
from meshctl.data.manifest import load_manifest
from meshctl.data.tokenizer import load_tokenizer
from meshctl.models import build


@pytest.fixture(scope="module")
def lm(kjv_data: Path) -> MeshctlLM:
    manifest = load_manifest(kjv_data)
    tokenizer = load_tokenizer(kjv_data / manifest.tokenizer.path)
    spec = {"n_embd": 64, "n_head": 4, "vocab_size": manifest.tokenizer.vocab_size, "block_size": 48,
            "family": "recursive", "structure": "1+1R2+1", "recurrence": "mesh", "init_std": 0.1}
    return MeshctlLM(build(spec, seed=0), tokenizer, manifest.tokenizer.eod_token_id, batch_size=3)


def requests(*args: tuple) -> list[SimpleNamespace]:
    return [SimpleNamespace(args=a) for a in args]


def summed_logprob(model: torch.nn.Module, tokens: list[int], n_cont: int, n_loop: int | None = None) -> float:
    """The model's own log-probability of the last n_cont tokens given the ones before them."""
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids[:, :-1], n_loop=n_loop).float(), dim=-1)[0]  # (seq - 1, vocab)
    targets = ids[0, 1:]
    return float(logprobs[-n_cont:].gather(-1, targets[-n_cont:, None]).sum())


def test_loglikelihood_is_the_models_summed_token_logprobs(lm: MeshctlLM) -> None:
    pairs = [
        ("In the beginning God created", " the heaven and the earth."),
        ("And Moses said unto the LORD,", " Behold"),
        ("Abram", " went down into Egypt to sojourn there"),
        ("And it came to pass, when men began to multiply on the face of the earth, and daughters were born "
         "unto them, That the sons of God saw the daughters of men that they were fair; and they took them wives "
         "of all which they chose.", " And the LORD said"),  # longer than block_size 48: cut from the left
        ("", "Let there be light"),  # empty context: conditioned on end-of-document
    ]
    results = lm.loglikelihood(requests(*pairs))
    assert len(results) == len(pairs)
    for (ctx, cont), (score, _greedy) in zip(pairs, results):
        ctx_ids = lm.tok_encode(ctx) if ctx else [lm.eot_token_id]
        whole = lm.tok_encode(ctx + cont) if ctx else ctx_ids + lm.tok_encode(cont)
        n_cont = len(whole) - len(ctx_ids)
        expected = summed_logprob(lm.model, whole[-(lm.max_length + 1):], n_cont)
        assert score == pytest.approx(expected, abs=1e-4)
    assert len(lm.tok_encode(pairs[3][0] + pairs[3][1])) > lm.max_length + 1


def test_greedy_flag_and_test_time_depth(lm: MeshctlLM) -> None:
    ctx = lm.tok_encode("And God said")
    with torch.no_grad():
        ids = torch.tensor([ctx])
        for _ in range(4):
            ids = torch.cat([ids, lm.model(ids)[:, -1:].argmax(-1)], dim=1)
    greedy = lm.tok_decode(ids[0, len(ctx):].tolist())
    assert lm.loglikelihood(requests(("And God said", greedy)))[0][1] is True

    deeper = MeshctlLM(lm.model, lm.hf_tokenizer, lm.eot_token_id, n_loop=4)
    whole = lm.tok_encode("And God said unto Noah")
    n_cont = len(whole) - len(ctx)
    (score, _), = deeper.loglikelihood(requests(("And God said", " unto Noah")))
    assert score == pytest.approx(summed_logprob(lm.model, whole, n_cont, n_loop=4), abs=1e-4)
    assert score != pytest.approx(summed_logprob(lm.model, whole, n_cont), abs=1e-4)


def test_rolling_loglikelihood_scores_every_token_once(lm: MeshctlLM) -> None:
    short = "And the evening and the morning were the first day."
    text = " ".join(["And God saw the light, that it was good: and God divided the light from the darkness."] * 6)
    tokens = lm.tok_encode(text)
    n, block = len(tokens), lm.max_length
    assert n > 2 * block
    # lm-eval's disjoint windows: [0, block) after end-of-document, then each next block of targets with the
    # block tokens before its last target as input
    expected = summed_logprob(lm.model, [lm.eot_token_id] + tokens[:block], block)
    for start in range(block, n, block):
        end = min(start + block, n)
        expected += summed_logprob(lm.model, tokens[end - block - 1 : end], end - start)
    short_tokens = lm.tok_encode(short)
    rolled = lm.loglikelihood_rolling(requests((text,), (short,)))
    assert rolled[0] == pytest.approx(expected, abs=1e-3)
    assert rolled[1] == pytest.approx(summed_logprob(lm.model, [lm.eot_token_id] + short_tokens, len(short_tokens)), abs=1e-4)


def test_generate_until_stops_at_the_until_string(lm: MeshctlLM) -> None:
    from meshctl.analysis.generation import generate

    prompt = "And God said"
    free = lm.tok_decode(generate(lm.model, [lm.tok_encode(prompt)], 20)[0])
    stop = free.strip().split()[1]  # the second generated word
    out = lm.generate_until(requests(
        (prompt, {"until": [stop], "max_gen_toks": 20}),
        (prompt, {"until": ["\u2603"], "max_gen_toks": 20}),
        ("In the", {"until": ["\u2603"], "max_gen_toks": 5}),
    ))
    assert out[0] == free[: free.index(stop)] and out[1] == free
    assert out[2] == lm.tok_decode(generate(lm.model, [lm.tok_encode("In the")], 5, use_cache=False)[0])

"""Exported runs of every family load in transformers and compute what meshctl computes: logits (fp32,
<= 1e-4), greedy tokens with and without the cache and from `meshctl sample`, lm-eval's `hf` scores; the
modeling code runs without meshctl; `meshctl export` refuses bad input with one line and exit 2."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from meshctl.analysis.loading import load_run
from tests.export.conftest import cli

RECURSIVE = ["recursive", "mesh", "vanilla_mesh"]
TEXT = "And God said, Let there be light: and there was light. And God saw the light, that it was good"


def hf_model(path: Path, **kw) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, **kw).eval()


def text_ids(loaded, text: str = TEXT) -> torch.Tensor:
    return torch.tensor([loaded.tokenizer.encode(text, add_special_tokens=False).ids])


@pytest.mark.slow
@pytest.mark.parametrize("family", RECURSIVE)
def test_logits_match_meshctl_at_the_trained_and_other_depths(family, trained, exported) -> None:
    loaded = load_run(trained(family))
    model = hf_model(exported(family))
    assert type(model).__name__ == "MeshctlForCausalLM" and model.dtype == torch.float32
    ids = text_ids(loaded)
    assert ids.shape[1] > 20
    with torch.no_grad():
        ours, theirs = loaded.model(ids), model(ids).logits
    assert theirs.shape == ours.shape == (1, ids.shape[1], loaded.model.spec.padded_vocab_size)
    assert (ours - theirs).abs().max().item() <= 1e-4
    if family == "vanilla_mesh":  # distinct cores: the depth is the structure
        assert model.config.n_loop == 2
        return
    deeper = hf_model(exported(family), n_loop=3)
    assert deeper.config.n_loop == 3 and deeper.config.num_hidden_layers == 1 + 3 + 1
    with torch.no_grad():
        ours3, theirs3 = loaded.model(ids, n_loop=3), deeper(ids).logits
    assert (ours3 - theirs3).abs().max().item() <= 1e-4
    assert (ours3 - ours).abs().max().item() > 1e-2  # the depth changes the model


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@pytest.mark.slow
@pytest.mark.parametrize("family", RECURSIVE)
def test_cached_generate_equals_uncached_and_meshctl_sample(family, trained, exported, export_root) -> None:
    loaded = load_run(trained(family))
    model = hf_model(exported(family))
    eod = loaded.eod_token_id
    prompt = "And God said"
    ids = text_ids(loaded, prompt)
    cached = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:].tolist()
    uncached = model.generate(ids, max_new_tokens=16, do_sample=False, use_cache=False)[0, ids.shape[1]:].tolist()
    result = cli("sample", trained(family).name, "--prompt", prompt, "--max-new-tokens", "16", "--device", "cpu",
                 "--results-dir", str(export_root), "--format", "json")
    assert result.exit_code == 0, result.output
    sampled = json.loads(result.stdout)["tokens"]
    assert until_eos(cached, eod) == until_eos(uncached, eod) == sampled
    assert len(sampled) >= 8 and len(set(sampled)) > 2, "degenerate test: the model stops or repeats at once"

    # a left-padded batch: each row as meshctl's batched, cached generation gives it
    from meshctl.analysis.generation import generate

    prompts = [loaded.tokenizer.encode(p, add_special_tokens=False).ids for p in ("In the beginning God", "Abram")]
    width = max(map(len, prompts))
    batch = torch.tensor([[eod] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False)[:, width:].tolist()
    expected = generate(loaded.model, prompts, 10, stop_ids=[eod],
                        vocab_size=loaded.tokenizer.get_vocab_size(with_added_tokens=True))
    assert [until_eos(row, eod) for row in out] == expected


@pytest.mark.slow
@pytest.mark.parametrize("family", RECURSIVE)
def test_lm_eval_hf_model_scores_as_the_meshctl_adapter(family, trained, exported) -> None:
    from lm_eval.models.huggingface import HFLM

    from meshctl.analysis.lm_eval_adapter import MeshctlLM

    loaded = load_run(trained(family))
    ours = MeshctlLM(loaded.model, loaded.tokenizer, loaded.eod_token_id, batch_size=4)
    theirs = HFLM(pretrained=str(exported(family)), trust_remote_code=True, batch_size=4, device="cpu")
    pairs = [("In the beginning God created", " the heaven and the earth."), ("And Moses said unto the LORD,", " Behold"),
             ("Abram", " went down into Egypt"), (TEXT * 3, " and God divided the light from the darkness.")]
    requests = [SimpleNamespace(args=p) for p in pairs]
    a, b = ours.loglikelihood(requests), theirs.loglikelihood(requests)
    assert [greedy for _, greedy in a] == [greedy for _, greedy in b]
    for (score_a, _), (score_b, _) in zip(a, b):
        assert score_a == pytest.approx(score_b, abs=1e-4)
    assert theirs.max_length == loaded.model.spec.block_size and len(ours.tok_encode(TEXT * 3)) > 64  # truncated alike
    rolling = [SimpleNamespace(args=(TEXT * 3,))]
    assert ours.loglikelihood_rolling(rolling)[0] == pytest.approx(theirs.loglikelihood_rolling(rolling)[0], abs=1e-3)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." + (node.module or "") if node.level else node.module.split(".")[0])
    return names


STANDALONE = """
import sys
sys.modules["meshctl"] = None  # `import meshctl` fails from here on
sys.path = [p for p in sys.path if p not in ("", {repo!r})]
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({path!r}, trust_remote_code=True).eval()
ids = torch.tensor([{ids!r}])
with torch.no_grad():
    torch.save(model(ids).logits, {out!r})
print(sorted(m for m in sys.modules if m.split(".")[0] == "meshctl" and sys.modules[m] is not None))
"""


@pytest.mark.slow
def test_the_modeling_code_needs_torch_and_transformers_only(trained, exported, tmp_path) -> None:
    path = exported("mesh")
    code = sorted(p for p in path.iterdir() if p.suffix == ".py")
    assert {p.name for p in code} >= {"modeling_meshctl.py", "configuration_meshctl.py", "families.py", "block.py"}
    for file in code:
        imports = imported_modules(file)
        assert not any(name.startswith("meshctl") for name in imports), file.name
        assert {n for n in imports if not n.startswith(".")} <= {"__future__", "math", "typing", "collections", "types",
                                                                  "torch", "transformers"}, (file.name, imports)
        assert all((path / f"{n[1:]}.py").is_file() for n in imports if n.startswith(".")), file.name
    config = json.loads((path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_meshctl.MeshctlForCausalLM"

    loaded = load_run(trained("mesh"))
    ids = text_ids(loaded)[0, :24].tolist()
    out = tmp_path / "logits.pt"
    script = STANDALONE.format(repo=str(Path(__file__).resolve().parents[2]), path=str(path), ids=ids, out=str(out))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    with torch.no_grad():
        expected = loaded.model(torch.tensor([ids]))
    assert (torch.load(out) - expected).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_vanilla_exports_as_gpt_neox_with_tokenizer_and_card(trained, exported) -> None:
    from transformers import GPTNeoXForCausalLM

    from meshctl.analysis.generation import generate
    from meshctl.models import count_params
    from meshctl.train.rundir import read_final

    loaded = load_run(trained("vanilla"))
    path = exported("vanilla")
    assert not any(p.suffix == ".py" for p in path.iterdir())
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert isinstance(model, GPTNeoXForCausalLM)
    ids = text_ids(loaded)
    with torch.no_grad():
        assert (model(ids).logits - loaded.model(ids)).abs().max().item() <= 1e-4
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.encode(TEXT, add_special_tokens=False) == ids[0].tolist()
    assert tokenizer.eos_token_id == loaded.eod_token_id == model.generation_config.eos_token_id
    vocab = loaded.tokenizer.get_vocab_size(with_added_tokens=True)
    assert model.generation_config.suppress_tokens == list(range(vocab, 2112)) and vocab == 2048
    prompt = ids[:, :6]
    with torch.no_grad():  # padding row 2100 made to outscore the greedy token: generate() must not emit it
        top = int(loaded.model(prompt)[0, -1, :vocab].argmax())
        for head in (model.get_output_embeddings(), loaded.model.embed_out):
            head.weight[2100] = 5 * head.weight[top]
    assert 2100 in generate(loaded.model, [prompt[0].tolist()], 8)[0]  # unrestricted, meshctl would emit it too
    new = model.generate(prompt, max_new_tokens=8, do_sample=False)[0, 6:].tolist()
    eod = loaded.eod_token_id
    assert until_eos(new, eod) == generate(loaded.model, [prompt[0].tolist()], 8, stop_ids=[eod], vocab_size=vocab)[0]
    assert all(t < vocab for t in new)
    card = (path / "README.md").read_text()
    final = read_final(trained("vanilla"))
    counts = count_params(loaded.model.spec)
    for fact in ("`vanilla`", "`4` layers", f"{counts.total:,} stored", f"{counts.non_embedding:,} non-embedding",
                 f"{final['tokens']:,} (40 steps)", f"{final['val_loss']:.4f} nats/token"):
        assert fact in card, fact


@pytest.mark.slow
def test_mesh_card_names_structure_recurrence_and_routers(trained, exported) -> None:
    from meshctl.models import count_params
    from meshctl.train.rundir import read_final

    card = (exported("mesh") / "README.md").read_text()
    spec = load_run(trained("mesh")).model.spec
    counts, final = count_params(spec), read_final(trained("mesh"))
    assert counts.recurrence > 0
    for fact in ("`1+1R2+1` (prelude 1, core 1 x 2 loops, coda 1)", "`mesh`", f"{counts.unrolled_non_embedding:,}",
                 f"| recurrence parameters | {counts.recurrence:,} |", f"{final['val_loss']:.4f}", "n_loop=3"):
        assert fact in card, fact


@pytest.mark.slow
def test_export_refuses_bad_input_and_replaces_only_with_force(trained, exported, export_root, tmp_path) -> None:
    run = trained("mesh").name
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    refused = cli("export", run, "--out", str(full), "--results-dir", str(export_root))
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "not empty" in refused.stderr and "--force" in refused.stderr
    assert [p.name for p in full.iterdir()] == ["keep.txt"]

    for bad, message in (("no-slash", "--push 'no-slash'"), ("a/b/c", "--push 'a/b/c'")):
        result = cli("export", run, "--out", str(tmp_path / "new"), "--push", bad, "--results-dir", str(export_root))
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    for inside in (trained("mesh"), export_root):  # --force must never remove the run it exports
        result = cli("export", run, "--out", str(inside), "--force", "--results-dir", str(export_root))
        assert result.exit_code == 2 and "holds the run being exported" in result.stderr, result.stderr
    assert (trained("mesh") / "checkpoints" / "last.ckpt").is_file()
    missing = cli("export", "nope", "--out", str(tmp_path / "new"), "--results-dir", str(export_root))
    assert missing.exit_code == 2 and "run 'nope'" in missing.stderr
    assert not (tmp_path / "new").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".new")]

    forced = cli("export", run, "--out", str(full), "--force", "--results-dir", str(export_root))
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in full.iterdir()) == sorted(p.name for p in exported("mesh").iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".full")]  # no temp or old dirs left

    offline = cli("export", run, "--out", str(tmp_path / "pushed"), "--push", "me/mesh-tiny",
                  "--results-dir", str(export_root), env={"HF_HUB_OFFLINE": "1"})
    assert offline.exit_code == 1 and len(offline.stderr.strip().splitlines()) == 1, offline.stderr
    assert "upload failed" in offline.stderr and (tmp_path / "pushed" / "model.safetensors").is_file()

"""Offline tasks, lm-eval end to end (HF_DATASETS_OFFLINE=1), eval/sample CLIs and run resolution."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from meshctl.analysis.loading import load_run, resolve_run, resolve_runs
from meshctl.analysis.offline_tasks import OfflineTaskSettings, cloze_passages, held_out_documents, multiple_choice
from meshctl.cli.app import app
from meshctl.errors import BadInput

runner = CliRunner()


def test_cloze_passages_end_before_a_sentence_final_word(kjv_data: Path) -> None:
    docs = held_out_documents(kjv_data)
    assert len(docs) == 15 and all("<|endoftext|>" not in d for d in docs)
    items = cloze_passages(docs, OfflineTaskSettings())
    assert len(items) > 300
    for item in items[:50]:
        text = docs[item["doc"]]
        at = text.index(item["context"]) + len(item["context"])
        assert text[at:].lstrip().startswith(item["target"])
        assert text[at:].lstrip()[len(item["target"])] in ".!?"
        assert 16 <= len(item["context"].split()) <= 64


def test_multiple_choice_chance_is_exact_for_any_scorer_that_ignores_the_passage(kjv_data: Path) -> None:
    items = multiple_choice(cloze_passages(held_out_documents(kjv_data), OfflineTaskSettings()))
    assert len(items) % 4 == 0 and len(items) >= 300
    for scorer in (len, lambda w: random.Random(w).random(), lambda w: 0.0):  # ties: argmax takes the first
        right = sum(max(range(4), key=lambda i: scorer(it["choices"][i])) == it["label"] for it in items)
        assert right * 4 == len(items)
    groups: dict[int, list[dict]] = {}
    for item in items:
        groups.setdefault(item["group"], []).append(item)
    for group in groups.values():
        assert sorted(it["label"] for it in group) == [0, 1, 2, 3]
        assert len({c.lower() for c in group[0]["choices"]}) == 4


def mc_accuracy(lm, items: list[dict]) -> float:
    reqs = [SimpleNamespace(args=(it["context"], " " + c)) for it in items for c in it["choices"]]
    scores = [s for s, _ in lm.loglikelihood(reqs)]
    right = sum(max(range(4), key=lambda c: scores[4 * i + c]) == it["label"] for i, it in enumerate(items))
    return right / len(items)


def test_lm_eval_end_to_end_offline_and_above_chance_on_its_own_corpus(trained_run: Path, results_root: Path) -> None:
    """`meshctl eval` -> simple_evaluate with MeshctlLM on the three offline tasks (no hub). The trained model
    beats the exact 25% chance of the multiple-choice cloze; the same model untrained does not."""
    out = runner.invoke(app, ["eval", "a1b2", "--tasks", "offline", "--limit", "200", "--results-dir",
                              str(results_root), "--format", "json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    docs = {d["task"]: d for d in json.loads(out.stdout)["results"]}
    assert set(docs) == {"meshctl_cloze", "meshctl_cloze_mc", "meshctl_bpb"}
    for task, doc in docs.items():
        on_disk = json.loads((trained_run / "eval" / f"{task}.json").read_text())
        assert on_disk["schema"] == "meshctl.eval/1" and on_disk["lm_eval_version"] == "0.4.13"
        assert len(on_disk["task_config_hash"]) == 64 and on_disk["checkpoint_step"] == 100
        assert on_disk["primary"] == on_disk["metrics"][on_disk["primary_metric"]]
    mc = docs["meshctl_cloze_mc"]
    assert mc["n_samples"]["effective"] == 200
    assert mc["metrics"]["acc"] > 0.35, mc["metrics"]  # chance is exactly 0.25 (measured: 0.48)
    assert docs["meshctl_cloze"]["metrics"]["acc"] > 0.0
    assert 0.5 < docs["meshctl_bpb"]["metrics"]["bits_per_byte"] < 3.0

    from meshctl.analysis.lm_eval_adapter import MeshctlLM
    from meshctl.models import build

    loaded = load_run(trained_run)
    items = [json.loads(line) for line in (trained_run / "eval" / "tasks" / "meshctl_cloze_mc.jsonl").open()][:120]
    untrained = MeshctlLM(build(loaded.model.spec, seed=1), loaded.tokenizer, loaded.eod_token_id, batch_size=32)
    trained = MeshctlLM(loaded.model, loaded.tokenizer, loaded.eod_token_id, batch_size=32)
    assert mc_accuracy(untrained, items) < 0.35 < mc_accuracy(trained, items)


def test_sample_cached_and_uncached_greedy_agree(trained_run: Path) -> None:
    args = ["sample", str(trained_run), "--prompt", "And the LORD said unto", "--max-new-tokens", "16",
            "--format", "json", "--device", "cpu"]
    cached, uncached = runner.invoke(app, args), runner.invoke(app, [*args, "--no-cache"])
    assert cached.exit_code == 0 and uncached.exit_code == 0, cached.output + uncached.output
    a, b = json.loads(cached.stdout), json.loads(uncached.stdout)
    assert a["tokens"] == b["tokens"] and a["completion"] and a["cache"] and not b["cache"]
    text = runner.invoke(app, args[:-4] + ["--temperature", "0.9", "--seed", "3", "--device", "cpu"])
    assert text.exit_code == 0 and text.stdout.startswith("And the LORD said unto")


def test_runs_resolve_by_path_id_prefix_and_sweep(trained_run: Path, mesh_run: Path, results_root: Path) -> None:
    assert resolve_run(str(trained_run), results_root) == trained_run
    assert resolve_run("a1b2c3-vanilla", results_root) == trained_run
    assert resolve_run("d4", results_root) == mesh_run
    with pytest.raises(BadInput, match="ambiguous"):
        (results_root / "runs" / "a1b2ff").mkdir()
        (results_root / "runs" / "a1b2ff" / "spec.json").write_text("{}")
        resolve_run("a1b2", results_root)
    with pytest.raises(BadInput, match="no run directory"):
        resolve_run("zzz", results_root)

    from meshctl.orchestrate.ledger import Ledger

    with Ledger(results_root / "meshctl.sqlite") as ledger:
        ledger.register_sweep("tiny", "h", {}, None, [("d4e5f6-mesh", {}, mesh_run, {}),
                                                      ("a1b2c3-vanilla", {}, trained_run, {})])
    assert resolve_runs("tiny", results_root) == [mesh_run, trained_run]
    model, spec, tokenizer = load_run(trained_run)
    assert spec.data.seq_len == 64 and tokenizer.get_vocab_size() == 2048 and not model.training


def test_bad_input_is_one_line(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_ckpt = tmp_path / "run"
    no_ckpt.mkdir()
    (no_ckpt / "spec.json").write_text((trained_run / "spec.json").read_text())
    for args, code, words in (
        (["sample", str(no_ckpt), "--prompt", "x"], 2, "no checkpoint"),
        (["eval", str(trained_run), "--tasks", "offline", "--loops", "2"], 2, "vanilla"),
        (["probe", "nothing-here", "--results-dir", str(tmp_path)], 2, "is neither a run (path, id or id prefix) nor a "
                                                                        "sweep"),
    ):
        out = runner.invoke(app, args)
        assert out.exit_code == code, (args, out.output)
        assert out.stderr.count("\n") == 1 and words in out.stderr, out.stderr
    # hub tasks where the hub cannot be reached (and no offline cache is declared): one line, exit 1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    out = runner.invoke(app, ["eval", str(trained_run)])
    assert out.exit_code == 1 and out.stderr.count("\n") == 1 and "cannot be reached" in out.stderr
    assert "lambada_openai" in out.stderr

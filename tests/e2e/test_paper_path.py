"""The paper's path on CPU, as a user walks it: real English text -> `prepare --tokenizer neox` (GPT-NeoX-20B,
the paper's and Pythia's tokenizer) -> a Pythia-70m ladder (vanilla, base, MeSH at matched compute) swept on
the local executor -> status -> report -> the vanilla run exported to Hugging Face with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from tests.orchestrate.helpers import meshctl, tiny_sweep, write_spec

pytestmark = pytest.mark.slow


def pythia_ladder(data, name: str = "paper70m") -> dict:
    """Pythia-70m: vanilla (6 layers), base and MeSH 1+2R2+1 (4 stored layers, 6 applied), 3 steps of 64 tokens."""
    return tiny_sweep(
        data, name,
        train={"global_batch": 2, "micro_batch": 2, "tokens": 192, "log_every": 1, "val_every": 3,
               "val_batches": 1, "ckpt_every": 3, "precision": "32"},
        groups=[{"name": "70m", "vanilla": "pythia-70m",
                 "variants": [{"structure": "1+2R2+1", "recurrence": ["base", "mesh"]}]}],
    )


@pytest.fixture(scope="module")
def neox_data(tmp_path_factory, demo_documents):
    root = tmp_path_factory.mktemp("neox")
    source = root / "text.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in demo_documents[:250]), encoding="utf-8")
    out = meshctl("data", "prepare", str(source), "--tokenizer", "neox", "--out", str(root / "data"),
                  "--val-fraction", "0.05", "--format", "json")
    assert out.returncode == 0, out.stderr
    manifest = json.loads(out.stdout)["manifest"]
    assert manifest["tokenizer"]["kind"] == "neox" and manifest["tokenizer"]["vocab_size"] == 50277
    return root / "data"


def test_pythia_ladder_on_neox_tokens_trains_reports_and_exports(tmp_path, neox_data) -> None:
    from transformers import GPTNeoXForCausalLM

    from meshctl.analysis.loading import load_run
    from meshctl.data.manifest import load_manifest
    from meshctl.models import export_hf

    results = tmp_path / "results"
    spec = write_spec(tmp_path / "paper70m.yaml", pythia_ladder(neox_data))
    plan = meshctl("sweep", str(spec), "--dry-run", "--format", "json", results=results)
    assert plan.returncode == 0, plan.stderr  # the preflight accepts 50,277 ids on a 50,304-row embedding

    out = meshctl("sweep", str(spec), "--wait", "--format", "json", results=results)
    assert out.returncode == 0, out.stderr
    status = json.loads(meshctl("status", "paper70m", "--format", "json", results=results).stdout)
    assert status["counts"] == {"completed": 3}
    assert all(r["step"] == r["total_steps"] == 3 and r["val_loss"] is not None for r in status["runs"])

    report = meshctl("report", "paper70m", "--format", "json", results=results)
    assert report.returncode == 0, report.stderr
    rows = {row["variant"]: row for row in json.loads(report.stdout)["runs"]}
    assert set(rows) == {"vanilla", "base", "mesh"} and all(r["state"] == "completed" for r in rows.values())
    assert rows["vanilla"]["params_non_embedding"] == 18_915_328  # Pythia-70m, counted exactly
    assert round(rows["base"]["non_embedding_vs_vanilla_pct"], 1) == -33.3  # 4 stored layers of 6
    assert all(r["val_loss"] < 11.0 for r in rows.values())  # below ln(50304) = 10.83 + noise: it trained
    md = meshctl("report", "paper70m", "--format", "markdown", results=results)
    assert md.returncode == 0 and "1+2R2+1" in md.stdout and "−33.3%" in md.stdout, md.stdout

    loaded = load_run(results / "runs" / rows["vanilla"]["run_id"])
    hf = GPTNeoXForCausalLM.from_pretrained(export_hf(loaded.model, tmp_path / "hf")).eval()
    train = load_manifest(neox_data).dataset(neox_data, "train")
    ids = torch.from_numpy(train.tokens[:64].astype("int64")).view(2, 32)
    whitespace = loaded.tokenizer.encode("def f():\n        return 1", add_special_tokens=False).ids
    ids[1, : len(whitespace)] = torch.tensor(whitespace)  # ids above the base vocabulary (50,270)
    assert int(ids.max()) >= 50254
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, loaded.model(ids), rtol=1e-4, atol=1e-4)


def test_sweep_on_pythia_sharded_samples_imported_in_place(tmp_path, pythia_like) -> None:
    """Pythia's own layout (21 byte-range shards of one .bin + document.idx, one sample per entry), imported
    without copying, with a held-out tail for validation, trains a Pythia-70m ladder in samples mode."""
    data = tmp_path / "pile"
    out = meshctl("data", "import", str(pythia_like["sharded"] / "document"), "--tokenizer", "neox",
                  "--val-samples", "8", "--out", str(data), "--format", "json")
    assert out.returncode == 0, out.stderr
    assert not list(data.glob("*.bin"))  # registered in place: no token was copied
    spec = pythia_ladder(data, name="pile70m")
    spec["data"] = {"path": str(data), "seq_len": 64, "mode": "samples"}  # 65-token samples here (Pythia: 2049)
    spec["train"]["tokens"] = 384  # 3 steps of 2 x 64
    spec["groups"][0]["variants"] = [{"structure": "1+2R2+1", "recurrence": "mesh"}]
    results = tmp_path / "results"
    out = meshctl("sweep", str(write_spec(tmp_path / "pile70m.yaml", spec)), "--wait", "--format", "json",
                  results=results)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["counts"] == {"completed": 2}
    assert all(r["step"] == 3 and r["val_loss"] is not None for r in doc["runs"])

"""`meshctl sweep` refuses data a job could only fail on, before anything is submitted: a tokenizer larger than
the model's embedding, and samples-mode entries of another length than seq_len + 1."""

from __future__ import annotations

from tests.orchestrate.helpers import meshctl, tiny_sweep, write_spec


def refused(out, *fragments: str) -> None:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), out.stderr


def test_sweep_preflight_on_pythia_style_data(tmp_path, pythia_like) -> None:
    data = tmp_path / "pile"
    out = meshctl("data", "import", str(pythia_like["sharded"] / "document"), "--tokenizer", "neox",
                  "--val-samples", "8", "--out", str(data))
    assert out.returncode == 0, out.stderr
    results = tmp_path / "results"

    wrong_length = tiny_sweep(data)
    wrong_length["data"] = {"path": str(data), "seq_len": 512, "mode": "samples"}
    wrong_length["groups"][0]["vanilla"] = {"preset": "tiny-64", "vocab_size": 50277}
    wrong_length["groups"][0]["train"] = {"lr": 3e-3, "tokens": 4 * 512 * 5}
    refused(meshctl("sweep", str(write_spec(tmp_path / "len.yaml", wrong_length)), results=results),
            "groups[0].vanilla", "seq_len + 1 = 513", "65-token entries", "data.seq_len: 64")

    small_vocab = tiny_sweep(data)
    small_vocab["data"] = {"path": str(data), "seq_len": 64, "mode": "samples"}
    small_vocab["train"]["tokens"] = 4 * 64 * 5
    refused(meshctl("sweep", str(write_spec(tmp_path / "vocab.yaml", small_vocab)), results=results),
            "groups[0].vanilla", "50,277 token ids exceed the model's embedding of 8,192 rows")
    assert not (results / "runs").exists()  # nothing was submitted

"""Sweep specs: expansion, planning and every refusal before anything is submitted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshctl.errors import BadInput
from meshctl.specs.sweep import expand, load_sweep, parse_sweep
from tests.orchestrate.helpers import meshctl, tiny_sweep, write_spec

SHIPPED = {"pythia_scale": 24, "smoke": 12, "ablation_buffer": 4, "ablation_init": 18, "ablation_schemes": 9, "mesh_backbones": 4}


@pytest.mark.parametrize("name,runs", sorted(SHIPPED.items()))
def test_shipped_sweeps_expand(name: str, runs: int) -> None:
    spec, _ = load_sweep(f"sweeps/{name}.yaml")
    planned = expand(spec)
    assert len(planned) == runs
    assert len({p.run_id for p in planned}) == runs
    assert [p.run_id for p in planned] == [p.run_id for p in expand(load_sweep(f"sweeps/{name}.yaml")[0])]


def test_pythia_scale_is_table1_at_matched_compute() -> None:
    planned = expand(load_sweep("sweeps/pythia_scale.yaml")[0])
    cells = {(p.labels["group"], p.labels["structure"], p.labels["variant"]) for p in planned}
    assert ("1.4b", "4+8R2+4", "anchor_emb") in cells and ("410m", "3+6R3+3", "residual") in cells
    assert ("160m", "2+4R2+2", "residual") not in cells  # the paper did not run it
    for p in planned:
        model, t = p.spec.model_spec(), p.spec.train
        assert p.spec.data.seq_len == 4096 and t.global_batch == 512 and t.max_steps == 120_818
        depth = {"160m": 12, "410m": 24, "1b": 16, "1.4b": 24}[p.labels["group"]]
        assert model.n_unrolled == depth
    lrs = {p.labels["group"]: p.spec.train.lr for p in planned}
    assert lrs == {"160m": 6e-4, "410m": 3e-4, "1b": 2.5e-4, "1.4b": 2e-4}


def test_dry_run_json_plans_the_paper_sweep() -> None:
    """Planning speed is benchmarks/orchestration.py's to measure (side by side), not a timed test's."""
    out = meshctl("sweep", "sweeps/pythia_scale.yaml", "--dry-run", "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["runs"]) == 24 and doc["totals"]["runs"] == 24
    mesh = next(r for r in doc["runs"] if r["group"] == "1.4b" and r["variant"] == "mesh")
    assert mesh["params_non_embedding"] == 805_797_918 and mesh["flop_formula"] == "palm"
    assert mesh["total_flops"] == pytest.approx(mesh["flops_per_token"] * mesh["tokens"])
    assert doc["totals"]["gpu_hours"] > 0
    # per-GPU memory from meshctl.train.memory at the run's strategy (README's table: 16 ranks, seq 4096)
    vanilla = next(r for r in doc["runs"] if r["group"] == "1.4b" and r["variant"] == "vanilla")
    assert vanilla["gpus"] == 16 and vanilla["strategy"] == "ddp"
    assert vanilla["gpu_memory_gib"] == pytest.approx(50.47, abs=0.01)
    assert mesh["gpu_memory_gib"] < vanilla["gpu_memory_gib"]  # a third fewer weights and AdamW states


def _refusal(tmp_path, spec, results=None):
    path = write_spec(tmp_path / "bad.yaml", spec)
    results = results or tmp_path / "results"
    out = meshctl("sweep", str(path), results=results)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not (results / "meshctl.sqlite").exists(), "nothing may be written for bad input"
    return out.stderr


def bad(spec, path, value):
    """spec with the value at a dotted/indexed path replaced."""
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return spec


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda s: bad(s, ["groups", 0, "variants", 0, "recurrance"], "mesh"), "groups[0].variants[0].recurrance: unknown key"),
        (lambda s: bad(s, ["groups", 0, "vanilla"], "tiny-999"), "unknown preset 'tiny-999'"),
        (lambda s: bad(s, ["groups", 0, "vanilla"], {"preset": "tiny-64", "structure": "1+1R2+1"}),
         "groups[0].vanilla: the reference is a recursive model (1+1R2+1) but must be vanilla"),
        (lambda s: bad(s, ["groups", 0, "vanilla"], {"preset": "tiny-64", "n_layr": 6}),
         "groups[0].vanilla: n_layr: not a model field"),
        (lambda s: bad(s, ["groups", 0, "variants", 0, "recurrence"], ["base", "memory"]), "groups[0].variants[0].recurrence"),
        (lambda s: bad(s, ["groups", 0, "variants", 0, "structure"], "1+1R3+1"), "unrolls to 5 layers but n_layer is 4"),
        (lambda s: bad(s, ["groups", 0, "train"], {"lr": 0}), "train.lr"),
        (lambda s: bad(s, ["train", "tokens"], 700), "not a multiple of the global batch"),
        (lambda s: bad(s, ["seeds"], [0, 0]), "duplicates the run"),
        (lambda s: bad(s, ["executor", "resources"], {}), "resources.timeout_min"),
        # an evaluation plan that could only fail after every run trained: refused before submitting
        (lambda s: bad(s, ["eval"], {"tasks": ["offline", "hellaswg"]}), "eval.tasks: unknown task 'hellaswg'"),
    ],
    ids=["unknown-key", "unknown-preset", "recursive-reference", "reference-typo", "unknown-recurrence", "unmatched-depth", "lr", "tokens", "duplicate",
         "no-timeout", "unknown-eval-task"],
)
def test_bad_specs_are_refused_naming_the_field(tmp_path, prepared_demo, mutate, expected) -> None:
    assert expected in _refusal(tmp_path, mutate(tiny_sweep(prepared_demo)))


def test_unmatched_compute_is_allowed_when_the_group_says_so(prepared_demo) -> None:
    spec = tiny_sweep(prepared_demo)
    spec["groups"][0]["matched_compute"] = False
    spec["groups"][0]["variants"][0]["structure"] = "1+1R3+1"
    assert {p.spec.model_spec().n_unrolled for p in expand(parse_sweep(spec))} == {4, 5}


def test_missing_data_and_yaml_errors(tmp_path, prepared_demo) -> None:
    assert "data.path" in _refusal(tmp_path, tiny_sweep(tmp_path / "nowhere"))
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nseeds: [0]\n\tgroups: []\ndata: {}\n")  # a tab on line 3
    out = meshctl("sweep", str(path), results=tmp_path / "results")
    assert out.returncode == 2 and "line 3" in out.stderr and out.stderr.count("\n") == 1


def test_a_reference_with_changes_sets_the_groups_width_and_depth() -> None:
    spec = tiny_sweep(Path("data/none"))
    spec["groups"][0]["vanilla"] = {"preset": "tiny-128", "n_layer": 6}
    spec["groups"][0]["variants"] = [{"structure": "1+2R2+1", "recurrence": ["base", "mesh"]},
                                     {"structure": "1+1R2+1", "model": {"n_embd": 64, "n_head": 2, "n_layer": 4}}]
    shapes = [(p.labels["variant"], m.n_embd, m.n_unrolled, m.vocab_size, m.family)
              for p in expand(parse_sweep(spec)) for m in [p.spec.model_spec()]]
    assert shapes == [("vanilla", 128, 6, 8192, "vanilla"), ("base", 128, 6, 8192, "recursive"),
                      ("mesh", 128, 6, 8192, "recursive"), ("base", 64, 4, 8192, "recursive")]  # variant's changes win
    full = {"n_embd": 96, "n_head": 4, "n_layer": 6, "vocab_size": 8192, "block_size": 1024}
    spec["groups"][0]["vanilla"], spec["groups"][0]["variants"] = full, [{"structure": "2+2R2+0"}]
    assert [p.spec.model_spec().n_embd for p in expand(parse_sweep(spec))] == [96, 96]
    with pytest.raises(Exception, match="unrolls to 4 layers but n_layer is 6"):
        spec["groups"][0]["variants"] = [{"structure": "1+1R2+1"}]
        expand(parse_sweep(spec))
    spec["groups"][0]["matched_compute"] = False  # the reference's depth no longer binds the variants
    assert [p.spec.model_spec().n_unrolled for p in expand(parse_sweep(spec))] == [6, 4]


def test_run_ids_of_preset_references_do_not_change() -> None:
    """A preset name hashes exactly the run specs it did before references could be mappings: the preset
    itself, and the preset with each variant's changes."""
    from meshctl.specs.hashing import run_id
    from meshctl.specs.run import RunSpec

    _, raw = load_sweep("sweeps/smoke.yaml")  # its data, train and seeds, with a preset name as reference
    raw = {**raw, "groups": [{"name": "tiny-128", "vanilla": "tiny-128", "train": {"tokens": 409600, "lr": 2.0e-3},
                              "variants": [{"structure": "1+1R2+1", "recurrence": ["base", "anchor", "mesh"]}]}]}
    sweep = parse_sweep(raw)
    for planned in expand(sweep):
        group = next(g for g in raw["groups"] if g["name"] == planned.labels["group"])
        model = {"preset": group["vanilla"]}
        if planned.labels["family"] != "vanilla":
            model.update(family=planned.labels["family"], structure=planned.labels["structure"],
                         recurrence=planned.labels["recurrence"])
        train = {**raw["train"], **group.get("train", {})}
        before = RunSpec.model_validate({"model": model, "data": raw["data"], "train": train,
                                         "seed": planned.labels["seed"]}).resolved()
        assert planned.run_id == run_id(before.model_dump(mode="json"))
    as_mapping = {**raw, "groups": [{**g, "vanilla": {"preset": g["vanilla"]}} for g in raw["groups"]]}
    assert [p.run_id for p in expand(parse_sweep(as_mapping))] == [p.run_id for p in expand(sweep)]


@pytest.mark.parametrize("name", ["smoke", "pythia_scale", "ablation_buffer"])
def test_a_cells_seeds_are_the_runs_a_full_validation_gives(name: str) -> None:
    """expand validates each cell once and copies it per seed (benchmarks/orchestration.py): every run
    must equal what validating its own spec gives, and keep the id its full spec hashes to."""
    from meshctl.specs.hashing import run_id
    from meshctl.specs.run import RunSpec

    spec, raw = load_sweep(f"sweeps/{name}.yaml")
    spec = parse_sweep({**raw, "seeds": [0, 7, 1234]})
    planned = expand(spec)
    for p in planned:
        dumped = p.spec.model_dump(mode="json")
        assert p.run_id == run_id(dumped)
        assert RunSpec.model_validate(dumped).resolved() == p.spec and p.spec.seed == p.labels["seed"]
    assert len({p.run_id for p in planned}) == len(planned)


def test_a_bad_later_seed_is_still_refused() -> None:
    spec = parse_sweep({**tiny_sweep(Path("data/x")), "seeds": [0, -1]})
    with pytest.raises(BadInput, match="seed"):
        expand(spec)

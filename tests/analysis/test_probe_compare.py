"""`meshctl probe SWEEP`: base against mesh from really trained tiny runs, the reuse of probe.json, and the
one-line errors when a sweep has no pair to compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.orchestrate.helpers import meshctl, tiny_sweep, write_spec


def _sweep(data: Path, name: str, recurrences: list[str]) -> dict:
    """tiny-64 recursive runs of 5 steps, no vanilla reference (probing compares recursive models)."""
    return tiny_sweep(data, name=name, groups=[{
        "name": "t64", "vanilla": "tiny-64", "include_vanilla": False, "train": {"lr": 3e-3},
        "variants": [{"structure": "1+1R2+1", "recurrence": recurrences}]}])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prepared_demo: Path) -> Path:
    root = tmp_path_factory.mktemp("probe_compare")
    results = root / "results"
    for name, recurrences in (("pair", ["base", "mesh"]), ("nomesh", ["base"])):  # nomesh reuses pair's base run
        out = meshctl("sweep", str(write_spec(root / f"{name}.yaml", _sweep(prepared_demo, name, recurrences))),
                      "--wait", results=results)
        assert out.returncode == 0, out.stderr
    return results


def test_sweep_probe_writes_three_comparison_figures_and_both_models_numbers(trained: Path) -> None:
    out = meshctl("probe", "pair", "--samples", "4", "--device", "cpu", "--format", "json", results=trained)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    plots = trained / "plots" / "pair" / "probe"
    assert summary == json.loads((plots / "probe_compare.json").read_text())
    assert summary["schema"] == "meshctl.probe_compare/1" and summary["compare"] == ["base", "mesh"]
    (pair,) = summary["pairs"]
    assert (pair["group"], pair["structure"], pair["seed"]) == ("t64", "1+1R2+1", 0)
    assert pair["figures"] == [f"t64_seed0_base_vs_mesh_{k}.png" for k in ("update_magnitude", "cka", "spectrum")]
    for name in pair["figures"]:
        assert (plots / name).read_bytes()[:4] == b"\x89PNG"
    base, mesh = pair["models"]["base"], pair["models"]["mesh"]
    assert base["run_id"] != mesh["run_id"]
    for model in (base, mesh):
        assert model["stages"] == ["prelude", "core_1", "core_2", "coda"]
        assert all(0.0 <= model["update_magnitude"][s]["mean"] <= 2.0 for s in model["stages"])
        assert len(model["cka"]) == len(model["states"]) == 5 and model["cka"][0][0] == pytest.approx(1.0)
        assert set(model["spectrum"]) == set(model["states"])
    assert base["update_magnitude"] != mesh["update_magnitude"]  # two different models were probed

    # Each run's probe.json is kept and reused at the same settings; other settings probe again.
    probe_file = trained / "runs" / base["run_id"] / "probe" / "probe.json"
    stamp = probe_file.stat().st_mtime_ns
    table = meshctl("probe", "pair", "--samples", "4", "--device", "cpu", "--out", str(trained / "figs"),
                    results=trained)
    assert table.returncode == 0, table.stderr
    assert probe_file.stat().st_mtime_ns == stamp and "update base" in table.stdout
    assert (trained / "figs" / "t64_seed0_base_vs_mesh_cka.png").is_file()
    assert meshctl("probe", "pair", "--samples", "3", "--device", "cpu", results=trained).returncode == 0
    assert probe_file.stat().st_mtime_ns != stamp and json.loads(probe_file.read_text())["data"]["samples"] == 3


@pytest.mark.parametrize(("sweep", "compare", "names"), [
    ("nomesh", "base,mesh", "t64 1+1R2+1: base"),
    ("pair", "base,anchor", "t64 1+1R2+1: base, mesh"),
])
def test_a_sweep_without_the_pair_is_refused_in_one_line(trained: Path, sweep: str, compare: str, names: str) -> None:
    out = meshctl("probe", sweep, "--compare", compare, "--samples", "2", results=trained)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    assert f"has no {compare.replace(',', '/')} pair" in out.stderr and names in out.stderr


def test_neither_a_run_nor_a_sweep_is_bad_input(trained: Path) -> None:
    out = meshctl("probe", "no-such-thing", results=trained)
    assert out.returncode == 2 and "neither a run" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_pairs_not_trained_yet_are_skipped_with_a_note(trained: Path, prepared_demo: Path) -> None:
    from tests.analysis.helpers import register

    spec = _sweep(prepared_demo, "partial", ["base", "mesh"])
    spec["groups"].append({**spec["groups"][0], "name": "t128", "vanilla": "tiny-128"})
    register(trained, spec)  # in the ledger as `meshctl sweep` leaves it; only t64's runs (pair's) exist
    out = meshctl("probe", "partial", "--samples", "4", "--device", "cpu", "--format", "json", results=trained)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert [p["group"] for p in summary["pairs"]] == ["t64"] and summary["untrained"] == ["t128 1+1R2+1 seed 0"]
    assert "not trained yet, skipped: t128" in out.stderr


def test_pairs_take_seed_0_else_the_first_shared_seed_and_name_structures_only_when_a_group_has_two() -> None:
    from types import SimpleNamespace

    from meshctl.analysis.probe_compare import find_pairs

    def row(group: str, structure: str, rec: str | None, seed: int) -> SimpleNamespace:
        family = "vanilla" if rec is None else "recursive"
        labels = {"group": group, "structure": structure, "family": family, "seed": seed,
                  **({"recurrence": rec} if rec else {})}
        return SimpleNamespace(labels=labels, run_dir=f"/r/{group}-{structure}-{rec}-{seed}")

    rows = [row("a", "4", None, 0), row("a", "1+1R2+1", "base", 0), row("a", "1+1R2+1", "mesh", 0),
            row("a", "1+1R2+1", "base", 1), row("a", "1+1R2+1", "mesh", 1),
            row("a", "2+1R1+1", "base", 1), row("a", "2+1R1+1", "mesh", 1), row("a", "2+1R1+1", "mesh", 2),
            row("b", "1+1R2+1", "base", 2), row("b", "1+1R2+1", "anchor", 2), row("b", "1+1R2+1", "mesh", 1)]
    pairs = find_pairs("s", rows, ("base", "mesh"))
    assert [(p.group, p.structure, p.seed, p.prefix) for p in pairs] == [
        ("a", "1+1R2+1", 0, "a_1-1R2-1_seed0_base_vs_mesh_"), ("a", "2+1R1+1", 1, "a_2-1R1-1_seed1_base_vs_mesh_")]
    assert [str(r) for r in pairs[1].runs] == ["/r/a-2+1R1+1-base-1", "/r/a-2+1R1+1-mesh-1"]
    (anchor,) = find_pairs("s", rows, ("anchor", "base"))
    assert (anchor.group, anchor.seed, anchor.prefix) == ("b", 2, "b_seed2_anchor_vs_base_")

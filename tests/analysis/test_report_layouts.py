"""The ablation layouts (the paper's Tables 3, 4, 6) found from the specs, and unfinished runs' cells.

These sweeps are registered in a ledger as `meshctl sweep` does and never trained: the report must
still list every planned model with what its spec implies and its state in the result cells.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest


def ledger_sweep(results: Path, name: str, group: dict[str, Any], seeds: list[int] | None = None) -> list[Any]:
    from meshctl.orchestrate.ledger import Ledger
    from meshctl.orchestrate.submit import ledger_path, run_dir_of
    from meshctl.specs.sweep import expand, parse_sweep, sweep_hash

    spec = {"name": name, "data": {"path": "data/none", "seq_len": 32},
            "train": {"global_batch": 4, "micro_batch": 4, "tokens": 640, "lr": 3e-3, "precision": "32"},
            "seeds": seeds or [0], "executor": {"kind": "local", "resources": {"timeout_min": 5}},
            "groups": [{"name": "t64", "vanilla": "tiny-64", **group}]}
    planned = expand(parse_sweep(spec))
    with Ledger(ledger_path(results)) as ledger:
        ledger.register_sweep(name, sweep_hash(spec), spec, "test", [
            (p.run_id, p.spec.model_dump(mode="json"), run_dir_of(results, p.run_id), p.labels) for p in planned])
    return planned


def ids(table: Any) -> list[str]:
    return [c.key for c in table.columns if c.kind == "id"]


def test_buffer_slots_table3(tmp_path: Path) -> None:
    from meshctl.analysis.report import build_report, render
    from meshctl.models import count_params, get_preset

    ledger_sweep(tmp_path, "buffer", {"include_vanilla": False, "variants": [
        {"structure": "1+1R2+1", "recurrence": "mesh", "mesh_slots": [3, 4, 5, 6]}]})
    report = build_report(tmp_path, "buffer")
    (table,) = report.summary.tables
    assert report.summary.varying == ["mesh_slots"] and ids(table) == ["variant", "structure", "mesh_slots"]
    assert [c.header for c in table.columns][2] == "B"
    assert [r["mesh_slots"].text for r in table.rows] == ["3", "4", "5", "6"]
    # no vanilla run: the change is against the group's vanilla preset
    reference = count_params(get_preset("tiny-64")).non_embedding
    for (_, run), row in zip(report.frame.iterrows(), table.rows):
        assert run["non_embedding_vs_vanilla_pct"] == pytest.approx(100 * (run["params_non_embedding"] / reference - 1))
        assert row["ppl_validation"].text == row["val_loss"].text == "new"
    assert [r["params_non_embedding"].mean for r in table.rows] == sorted(r["params_non_embedding"].mean
                                                                        for r in table.rows)
    markdown = render(report, "markdown")
    assert "0 of 4 runs completed (4 new)." in markdown and "| B |" in markdown


def test_schemes_table4_and_backbones_table6(tmp_path: Path) -> None:
    from meshctl.analysis.report import build_report

    ledger_sweep(tmp_path, "schemes", {"variants": [
        {"structure": "1+1R2+1", "recurrence": ["base", "anchor", "static_comb", "mesh"]}]})
    ledger_sweep(tmp_path, "backbones", {"variants": [
        {"structure": "1+1+1+1", "family": "vanilla_mesh", "recurrence": "mesh", "label": "vanilla+mesh"},
        {"structure": "1+1R2+1", "recurrence": ["base", "mesh"]}]})
    schemes = build_report(tmp_path, "schemes")
    assert schemes.summary.varying == ["recurrence"]
    assert ids(schemes.summary.tables[0]) == ["variant", "structure"]  # the variant names are the schemes
    assert [r["variant"].text for r in schemes.summary.tables[0].rows] == ["vanilla", "base", "anchor",
                                                                          "static_comb", "mesh"]
    backbones = build_report(tmp_path)  # the most recently updated sweep
    assert backbones.sweep == "backbones"
    assert backbones.summary.varying == ["family", "structure", "recurrence"]
    (table,) = backbones.summary.tables
    assert ids(table) == ["variant", "structure", "family", "recurrence"]
    rows = {r["variant"].text: r for r in table.rows}
    assert rows["vanilla+mesh"]["family"].text == "vanilla_mesh" and rows["vanilla+mesh"]["structure"].text == "1+1+1+1"
    assert rows["vanilla+mesh"]["non_embedding_vs_vanilla_pct"].mean > 0  # distinct cores plus routers
    assert rows["vanilla"]["recurrence"].text == "—"


def test_unfinished_runs_show_their_state_and_progress(tmp_path: Path) -> None:
    """A cancelled run that got 3 of its 5 steps in, beside runs never submitted, over two seeds."""
    from meshctl.analysis.report import build_report, render
    from meshctl.orchestrate.ledger import Ledger, Submission
    from meshctl.orchestrate.markers import write_cancelled

    planned = ledger_sweep(tmp_path, "partial", {"variants": [{"structure": "1+1R2+1", "recurrence": "mesh"}]},
                           seeds=[0, 1])
    mesh = next(p for p in planned if p.labels["variant"] == "mesh" and p.labels["seed"] == 0)
    run_dir = tmp_path / "runs" / mesh.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "tokens": 128 * s, "train_loss": 9.0 - 0.1 * s}) + "\n" for s in (1, 2, 3)))
    with Ledger(tmp_path / "meshctl.sqlite") as ledger:
        ledger.record_submissions([Submission(mesh.run_id, "local", "999999999", None, str(tmp_path / "jobs"),
                                              time.time() - 5)])
    write_cancelled(run_dir)
    report = build_report(tmp_path, "partial")
    (table,) = report.summary.tables
    cell = next(r for r in table.rows if r["variant"].text == "mesh")["val_loss"]
    assert cell.pending and cell.text == "cancelled 3/5, new"
    assert report.summary.coverage == {"runs": 4, "completed": 0, "states": {"cancelled": 1, "new": 3}}
    assert "0 of 4 runs completed (1 cancelled, 3 new)." in render(report, "markdown")
    run = report.frame.set_index("run_id").loc[mesh.run_id]
    assert run["state"] == "cancelled" and run["step"] == 3 and run["total_steps"] == 5

"""Paired statistics over seeds: the t quantile, the pairing by hand-computed values, and the report's
verdicts in every format over fake finished runs (final.json and eval/*.json written here, nothing trained)
of a partial 3-seed sweep, a one-seed sweep and an unpaired one; the scaling plot's error bars."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.analysis.test_report import eval_document
from tests.analysis.test_report_layouts import ledger_sweep

MINUS = "\u2212"
LADDER = {"variants": [{"structure": "1+1R2+1", "recurrence": ["base", "anchor", "mesh"]}]}
# val loss by (variant, seed); None: the run failed. mesh - base = -0.10, -0.09, -0.09 (CI excludes 0),
# base - vanilla = +0.05, +0.02, +0.07 (CI includes 0), anchor has 2 of 3 seeds
LOSS = {"vanilla": (5.00, 5.10, 4.95), "base": (5.05, 5.12, 5.02), "anchor": (5.00, 5.08, None),
        "mesh": (4.95, 5.03, 4.93)}
PIQA = {"base": (0.40, 0.41, 0.41), "mesh": (0.42, 0.44, 0.43)}  # vanilla never evaluated


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042), (1e7, 1.960)])
def test_t_quantile_matches_the_tables(df: float, expected: float) -> None:
    from meshctl.analysis.paired import t_cdf, t_quantile

    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-4)
    assert t_cdf(t_quantile(0.9, df), df) == pytest.approx(0.9, abs=1e-9)
    assert t_quantile(0.5, df) == 0.0


def test_t_quantile_one_degree_is_the_cauchy_quantile() -> None:
    from meshctl.analysis.paired import t_quantile

    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-10)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_ci_excludes_zero() -> None:
    from meshctl.analysis.paired import pair

    # differences -0.10, -0.12, -0.08: mean -0.10, sd 0.02, half width t(0.975, 2) 0.02 / sqrt 3 = 0.04968
    p = pair({0: 4.90, 1: 4.88, 2: 4.92}, {0: 5.00, 1: 5.00, 2: 5.00})
    assert p.paired and p.seeds == [0, 1, 2] and p.n == 3 and p.wins == 3 and p.pending == []
    assert p.mean == pytest.approx(-0.10) and p.sd == pytest.approx(0.02)
    assert p.ci_low == pytest.approx(-0.14968, abs=1e-5) and p.ci_high == pytest.approx(-0.05032, abs=1e-5)
    assert p.excludes_zero is True


def test_ci_includes_zero_and_higher_is_better() -> None:
    from meshctl.analysis.paired import pair

    # accuracy differences +0.02, -0.04: mean -0.01, sd 0.042426, half width 12.706 * 0.042426 / sqrt 2 = 0.38118
    p = pair({3: 0.52, 7: 0.46}, {3: 0.50, 7: 0.50}, better="higher")
    assert p.n == 2 and p.wins == 1 and p.mean == pytest.approx(-0.01) and p.sd == pytest.approx(0.0424264)
    assert p.ci_low == pytest.approx(-0.39118, abs=1e-4) and p.ci_high == pytest.approx(0.37118, abs=1e-4)
    assert p.excludes_zero is False


def test_one_pair_has_no_estimate() -> None:
    from meshctl.analysis.paired import pair

    p = pair({0: 4.9}, {0: 5.0})
    assert p.n == 1 and p.mean == pytest.approx(-0.1) and p.wins == 1
    assert p.sd is None and p.ci_low is None and p.ci_high is None and p.excludes_zero is None


def test_unpaired_and_partial_seed_sets() -> None:
    from meshctl.analysis.paired import pair

    unpaired = pair({0: 4.9, 1: 4.8, 2: 4.7}, {1: 5.0, 2: 5.0, 3: 5.0})
    assert not unpaired.paired and unpaired.shared == [1, 2] and unpaired.seeds == [1, 2]
    assert unpaired.differences == pytest.approx([-0.2, -0.3]) and unpaired.pending == []
    partial = pair({0: 4.9, 1: 4.8, 2: None}, {0: 5.0, 1: 5.0, 2: 5.0})
    assert partial.paired and partial.seeds == [0, 1] and partial.pending == [2] and partial.n == 2
    nothing = pair({0: None}, {0: 5.0})
    assert nothing.n == 0 and nothing.mean is None and nothing.pending == [0]


def fake_sweep(results: Path, name: str, seeds: list[int], group: dict[str, Any] = LADDER) -> None:
    """Registered as `meshctl sweep` does; final.json (and piqa evaluations) written for the runs of LOSS."""
    from meshctl.orchestrate.markers import write_failure

    for run in ledger_sweep(results, name, group, seeds=seeds):
        variant, seed = run.labels["variant"], run.labels["seed"]
        run_dir = results / "runs" / run.run_id
        run_dir.mkdir(parents=True)
        loss = LOSS[variant][seed]
        if loss is None:
            write_failure(run_dir, RuntimeError("diverged"))
            continue
        (run_dir / "final.json").write_text(json.dumps({"val_loss": loss, "perplexity": math.exp(loss)}))
        if variant in PIQA:
            (run_dir / "eval").mkdir()
            doc = eval_document(run_dir, "piqa", PIQA[variant][seed], None, None)
            (run_dir / "eval" / "piqa.json").write_text(json.dumps(doc))


@pytest.fixture
def ladder(tmp_path: Path) -> Any:
    from meshctl.analysis.report import build_report

    fake_sweep(tmp_path, "ladder", [0, 1, 2])
    return build_report(tmp_path, "ladder")


def _find(report: Any, variant: str, reference: str, metric: str = "val_loss") -> Any:
    """The comparison of a report (or of a summary)."""
    summary = getattr(report, "summary", report)
    return next(c for t in summary.tables for c in t.paired
                if (c.variant, c.reference, c.metric.key) == (variant, reference, metric))


def test_partial_three_seed_sweep(ladder: Any) -> None:
    (table,) = ladder.summary.tables
    pairs = [(c.variant, c.reference_variant, c.metric.key) for c in table.paired]
    assert pairs == [("base", "vanilla", "val_loss"), ("anchor", "base", "val_loss"), ("anchor", "vanilla", "val_loss"),
                     ("mesh", "base", "val_loss"), ("mesh", "vanilla", "val_loss"),
                     ("mesh", "base", "acc_0shot_avg")]  # no accuracy pair with the never-evaluated vanilla
    mesh = _find(ladder, "mesh", "base")
    # -0.10, -0.09, -0.09: mean -0.093333, sd 0.0057735, half width 4.3027 * 0.0057735 / sqrt 3 = 0.014342
    assert mesh.pairing.mean == pytest.approx(-0.093333, abs=1e-6) and mesh.pairing.sd == pytest.approx(0.0057735)
    assert mesh.verdict == ("mesh vs base (val loss, lower is better): \u22120.093 ± 0.006 nats (95% CI \u22120.108 "
                            "to \u22120.079), lower on 3/3 seeds, CI excludes 0 (mesh lower)")
    base = _find(ladder, "base", "vanilla")
    # +0.05, +0.02, +0.07: mean 0.046667, sd 0.025166, half width 0.062517
    assert base.pairing.ci_low == pytest.approx(-0.01585, abs=1e-5) and base.pairing.wins == 0
    assert base.verdict.endswith("(95% CI \u22120.016 to +0.109), lower on 0/3 seeds, CI includes 0 (no clear difference)")
    anchor = _find(ladder, "anchor", "base")
    assert anchor.pairing.n == 2 and anchor.pairing.seeds == [0, 1] and anchor.pairing.pending == [2]
    assert anchor.verdict.endswith("lower on 2/2 seeds, CI includes 0 (no clear difference); 2 of 3 pairs "
                                   "completed (seed 2 not completed)")
    acc = _find(ladder, "mesh", "base", "acc_0shot_avg")
    assert acc.verdict.startswith("mesh vs base (0-shot avg accuracy, higher is better): +2.33 ± 0.58 points")
    assert "higher on 3/3 seeds" in acc.verdict


def test_every_format_carries_the_numbers(ladder: Any, tmp_path: Path) -> None:
    import pandas as pd

    from meshctl.analysis.collect import read_csv
    from meshctl.analysis.report import PAIRED_HEADING, latex_escape, render

    verdicts = [c.verdict for t in ladder.summary.tables for c in t.paired]
    markdown = render(ladder, "markdown")
    assert PAIRED_HEADING in markdown and all(f"- {v}\n" in markdown for v in verdicts)
    page = render(ladder, "html")
    assert all(f"<li>{html.escape(v)}</li>" in page for v in verdicts)
    latex = render(ladder, "latex")
    assert all(latex_escape(v) in latex for v in verdicts) and "95\\% CI" in latex
    body = "\n".join(ln for ln in latex.splitlines() if not ln.startswith("%"))
    assert body.count("{") == body.count("}")

    doc = json.loads(render(ladder, "json"))
    keys = {"group", "metric", "better", "variant", "reference", "reference_variant", "paired", "variant_seeds",
            "reference_seeds", "seeds", "pending_seeds", "differences", "n", "mean", "sd", "ci_level", "ci_low",
            "ci_high", "wins", "excludes_zero", "verdict"}
    assert all(set(r) == keys for r in doc["paired"]) and [r["verdict"] for r in doc["paired"]] == verdicts
    mesh = next(r for r in doc["paired"] if (r["variant"], r["reference"], r["metric"]) == ("mesh", "base", "val_loss"))
    assert mesh["differences"] == pytest.approx([-0.10, -0.09, -0.09]) and mesh["ci_level"] == 0.95
    assert mesh["ci_high"] == pytest.approx(-0.093333 + 0.014342, abs=1e-5) and mesh["excludes_zero"] is True
    anchor = next(r for r in doc["paired"] if (r["variant"], r["reference"]) == ("anchor", "base"))
    assert anchor["seeds"] == [0, 1] and anchor["pending_seeds"] == [2] and anchor["n"] == 2

    path = tmp_path / "report.csv"
    path.write_text(render(ladder, "csv"))
    back = read_csv(path)
    pd.testing.assert_frame_equal(back, ladder.frame, check_dtype=False, check_exact=True)
    runs = back[back["variant"] == "mesh"].sort_values("seed")
    assert runs["paired_val_loss_vs_base"].tolist() == pytest.approx([-0.10, -0.09, -0.09])
    assert runs["paired_val_loss_vs_base_mean"].tolist() == pytest.approx([-0.093333] * 3, abs=1e-6)
    assert (runs["paired_val_loss_vs_base_n"] == 3).all() and (runs["paired_val_loss_vs_base_wins"] == 3).all()
    assert runs["paired_val_loss_vs_base_verdict"].iloc[0] == mesh["verdict"]
    anchor_runs = back[back["variant"] == "anchor"].sort_values("seed")
    assert anchor_runs["paired_val_loss_vs_base"].isna().tolist() == [False, False, True]  # seed 2 failed
    assert back.loc[back["variant"] == "vanilla", "paired_val_loss_vs_base_mean"].isna().all()


def test_one_seed_never_fakes_an_interval(tmp_path: Path) -> None:
    from meshctl.analysis.report import build_report, render

    fake_sweep(tmp_path, "single", [0])
    report = build_report(tmp_path, "single")
    mesh = _find(report, "mesh", "base")
    assert mesh.verdict == ("mesh vs base (val loss, lower is better): n=1 (seed 0): \u22120.100 nats, "
                            "no paired estimate (one pair has no spread; needs 2+ seeds)")
    markdown = render(report, "markdown")
    assert "CI" not in markdown.split("Paired over seeds", 1)[1].split("\n", 1)[1].split("non-emb params:")[0]
    record = next(r for r in json.loads(render(report, "json"))["paired"] if r["variant"] == "mesh")
    assert record["n"] == 1 and record["sd"] is record["ci_low"] is record["ci_high"] is record["excludes_zero"] is None


def test_unpaired_models_are_compared_on_their_shared_seeds(ladder: Any) -> None:
    """The base model planned without seed 0 (rows of another sweep's seeds): named unpaired, never silently."""
    import dataclasses

    from meshctl.analysis.tables import summarize

    frame = ladder.frame[~((ladder.frame["variant"] == "base") & (ladder.frame["seed"] == 0))]
    summary = summarize(frame)
    mesh = _find(summary, "mesh", "base")
    assert not mesh.pairing.paired and mesh.pairing.seeds == [1, 2]
    assert mesh.verdict.startswith("mesh vs base (val loss, lower is better): unpaired (mesh seeds 0, 1, 2; base "
                                   "seeds 1, 2), compared on the shared seeds 1, 2 only: \u22120.090 ± 0.000 nats")
    report = dataclasses.replace(ladder, frame=frame, summary=summary)
    from meshctl.analysis.report import render

    assert "unpaired (mesh seeds 0, 1, 2; base seeds 1, 2)" in render(report, "markdown")


def test_scaling_plot_has_error_bars_over_seeds(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.container import ErrorbarContainer

    from meshctl.analysis.plots import ERROR_BARS, scaling, scaling_figure
    from meshctl.analysis.report import build_report

    fake_sweep(tmp_path, "ladder", [0, 1, 2])
    report = build_report(tmp_path, "ladder")
    fig = scaling_figure(report.frame, "ladder")
    loss = fig.axes[0]
    bars = {c.get_label(): c for c in loss.containers if isinstance(c, ErrorbarContainer)}
    assert set(bars) == {"vanilla", "base R2 (\u221225%)", "anchor R2 (\u221225%)", "mesh R2 (\u221224%)"}
    (segment,) = bars["mesh R2 (\u221224%)"].lines[2][0].get_segments()
    (x, low), (_, high) = segment
    values = LOSS["mesh"]
    mean, std = sum(values) / 3, math.sqrt(sum((v - sum(values) / 3) ** 2 for v in values) / 2)
    assert (low + high) / 2 == pytest.approx(mean) and (high - low) / 2 == pytest.approx(std)
    assert x == report.frame.loc[report.frame["variant"] == "mesh", "params_non_embedding"].iloc[0]
    assert ERROR_BARS in [t.get_text() for t in fig.texts] and "std over seeds" in ERROR_BARS
    path = scaling(report.frame, tmp_path / "scaling.png", "ladder")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_plot_draws_no_bar_for_one_seed(tmp_path: Path) -> None:
    from matplotlib.container import ErrorbarContainer

    from meshctl.analysis.plots import scaling_figure
    from meshctl.analysis.report import build_report

    fake_sweep(tmp_path, "single", [0])
    fig = scaling_figure(build_report(tmp_path, "single").frame, "single")
    for container in fig.axes[0].containers:
        assert isinstance(container, ErrorbarContainer)
        assert all(not math.isfinite(y) for seg in container.lines[2][0].get_segments() for _, y in seg)


def test_a_reference_with_nothing_completed_yet(ladder: Any) -> None:
    from meshctl.analysis.tables import summarize

    frame = ladder.frame.copy()
    frame.loc[frame["variant"] == "base", "state"] = "running"
    mesh = _find(summarize(frame), "mesh", "base")
    assert mesh.pairing.n == 0 and mesh.verdict == ("mesh vs base (val loss, lower is better): no completed pair "
                                                    "yet (seed 0, 1, 2 not completed)")


def test_cli_prints_the_verdicts(tmp_path: Path) -> None:
    from tests.analysis.test_report import meshctl

    fake_sweep(tmp_path, "ladder", [0, 1, 2])
    out = meshctl("report", "ladder", "--results-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert ("- mesh vs base (val loss, lower is better): \u22120.093 ± 0.006 nats (95% CI \u22120.108 to \u22120.079), "
            "lower on 3/3 seeds, CI excludes 0 (mesh lower)\n") in out.stdout

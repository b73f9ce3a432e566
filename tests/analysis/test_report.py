"""`meshctl report` on a sweep of really trained tiny models: rows, deltas, seeds, partial cells, every
format parsed back, the plots, the CLI's errors.

The sweep (two scales x vanilla/base/mesh x two seeds, 10 steps each) is registered in a ledger the way
`meshctl sweep` does and trained in-process with `run_training` (~10 s); three runs are left unrun, so
the report covers 9 of 12. The t64 runs get `eval/*.json` documents in the schema of
`meshctl.analysis.evaluation` (values written here; evaluating is that module's test's business).
"""

from __future__ import annotations

import html.parser
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.analysis.helpers import register

NAME = "rep"
TASKS = {"piqa": "acc_norm", "lambada_openai": "acc"}
UNRUN = {("t128", "base", 0), ("t128", "base", 1), ("t128", "mesh", 1)}


def sweep_spec(data: Path) -> dict[str, Any]:
    return {
        "name": NAME,
        "description": "report test - two tiny scales",
        "data": {"path": str(data), "seq_len": 32},
        "train": {"global_batch": 4, "micro_batch": 4, "tokens": 1280, "log_every": 1, "val_every": 5,
                  "val_batches": 2, "ckpt_every": 10, "precision": "32", "lr": 3e-3},
        "seeds": [0, 1],
        "executor": {"kind": "local", "resources": {"timeout_min": 10}},
        "groups": [
            {"name": "t64", "vanilla": "tiny-64", "variants": [{"structure": "1+1R2+1", "recurrence": ["base", "mesh"]}]},
            {"name": "t128", "vanilla": "tiny-128",
             "variants": [{"structure": "1+1R2+1", "recurrence": ["base", "mesh"]}]},
        ],
    }


def eval_document(run_dir: Path, task: str, value: float, n_loop: int | None, trained: int | None) -> dict:
    metric = TASKS[task]
    return {"schema": "meshctl.eval/1", "run_id": run_dir.name, "task": task, "num_fewshot": 0, "limit": None,
            "n_loop": n_loop, "trained_n_loop": trained, "checkpoint_step": 10,
            "metrics": {"acc": value - 0.01, "acc_norm": value} if metric == "acc_norm" else {"acc": value},
            "stderr": {}, "primary_metric": metric, "primary": value, "lm_eval_version": "0.4.9"}


def write_evals(run_dir: Path, labels: dict[str, Any]) -> None:
    trained = 2 if labels["family"] != "vanilla" else None
    base = {"vanilla": 0.40, "base": 0.36, "mesh": 0.41}[labels["variant"]] + 0.01 * labels["seed"]
    (run_dir / "eval").mkdir(exist_ok=True)
    for i, task in enumerate(TASKS):
        doc = eval_document(run_dir, task, base + 0.02 * i, trained, trained)
        (run_dir / "eval" / f"{task}.json").write_text(json.dumps(doc))
    if trained:  # a test-time-depth evaluation: not the trained model, left out of the table
        doc = eval_document(run_dir, "piqa", 0.99, 3, trained)
        (run_dir / "eval" / "piqa.loops3.json").write_text(json.dumps(doc))


@pytest.fixture(scope="session")
def report_results(tmp_path_factory: pytest.TempPathFactory, prepared_demo: Path) -> Path:
    from meshctl.train.job import run_training

    results = tmp_path_factory.mktemp("report") / "results"
    planned = register(results, sweep_spec(prepared_demo))
    for run in planned:
        key = (run.labels["group"], run.labels["variant"], run.labels["seed"])
        if key in UNRUN:
            continue
        run_dir = results / "runs" / run.run_id
        run_training(run.spec, run_dir)
        if run.labels["group"] == "t64":
            write_evals(run_dir, run.labels)
    return results


@pytest.fixture(scope="session")
def report(report_results: Path) -> Any:
    from meshctl.analysis.report import build_report

    return build_report(report_results)


def _row(table: Any, variant: str) -> dict[str, Any]:
    return next(r for r in table.rows if r["variant"].text == variant)


def _final(run_dir: str) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "final.json").read_text())


def test_one_row_per_run_with_states_and_counts(report: Any) -> None:
    from meshctl.models import count_params
    from meshctl.models.spec import ModelSpec

    df = report.frame
    assert report.sweep == NAME and len(df) == 12 and df["run_id"].is_unique
    assert (df["state"] == "completed").sum() == 9 and set(df["state"]) == {"completed", "new"}
    unrun = {(g, v, s) for g, v, s in df.loc[df["state"] == "new", ["group", "variant", "seed"]].itertuples(index=False)}
    assert unrun == UNRUN
    assert df.loc[df["state"] == "new", "val_loss"].isna().all()
    for _, run in df.iterrows():
        vanilla = df[(df["group"] == run["group"]) & (df["family"] == "vanilla")].iloc[0]
        ratio = run["params_non_embedding"] / vanilla["params_non_embedding"]
        assert run["non_embedding_vs_vanilla_pct"] == pytest.approx(100 * (ratio - 1))
        if run["state"] == "completed":
            final = _final(run["run_dir"])
            spec = json.loads((Path(run["run_dir"]) / "spec.json").read_text())
            assert run["params_non_embedding"] == count_params(ModelSpec.model_validate(spec["model"])).non_embedding
            assert run["val_loss"] == final["val_loss"] and run["ppl_validation"] == final["perplexity"]
            assert run["flops_per_token"] == final["flops_per_token"] and run["tokens_trained"] == final["tokens"]
    # the same structure shares a core: 1+1R2+1 stores 3 of the 4 layers, MeSH adds its routers
    t64 = df[(df["group"] == "t64") & (df["seed"] == 0)].set_index("variant")
    assert t64.loc["base", "non_embedding_vs_vanilla_pct"] < t64.loc["mesh", "non_embedding_vs_vanilla_pct"] < 0
    assert t64.loc["mesh", "params_recurrence"] > 0


def test_evaluations_are_read_and_averaged(report: Any) -> None:
    df = report.frame.set_index(["group", "variant", "seed"]).sort_index()
    mesh = df.loc[("t64", "mesh", 1)]
    assert mesh["acc_0shot_piqa"] == pytest.approx(0.42) and mesh["acc_0shot_lambada_openai"] == pytest.approx(0.44)
    assert mesh["acc_0shot_avg"] == pytest.approx(0.43) and mesh["acc_0shot_tasks"] == 2  # loops3 file left out
    assert math.isnan(df.loc[("t128", "vanilla", 0), "acc_0shot_avg"])
    vanilla_mean = df.loc[("t64", "vanilla"), "acc_0shot_avg"].mean()
    assert mesh["delta_acc_0shot_avg_vs_vanilla"] == pytest.approx(0.43 - vanilla_mean)


def test_table1_layout_seeds_deltas_and_best(report: Any) -> None:
    summary = report.summary
    assert [t.group for t in summary.tables] == ["t64", "t128"]
    assert summary.varying == ["recurrence"]
    t64, t128 = summary.tables
    assert [r["variant"].text for r in t64.rows] == ["vanilla", "base", "mesh"]
    keys = [c.key for c in t64.columns]
    assert keys[:2] == ["variant", "structure"] and "recurrence" not in keys  # the variant name already says it
    for key in ("params_non_embedding", "non_embedding_vs_vanilla_pct", "flops_per_token", "tokens",
                "ppl_validation", "acc_0shot_avg", "acc_0shot_piqa", "seeds"):
        assert key in keys
    df = report.frame
    vanilla = df[(df["group"] == "t64") & (df["variant"] == "vanilla")]
    cell = _row(t64, "vanilla")["ppl_validation"]
    assert cell.n == 2 and cell.mean == pytest.approx(vanilla["ppl_validation"].mean())
    assert cell.std == pytest.approx(vanilla["ppl_validation"].std(ddof=1))
    assert cell.text == f"{cell.mean:.2f} ± {cell.std:.2f}"
    assert _row(t64, "vanilla")["seeds"].text == "2/2"
    assert _row(t64, "vanilla")["non_embedding_vs_vanilla_pct"].text == "—"
    base = _row(t64, "base")
    expected = df[(df["group"] == "t64") & (df["variant"] == "base")]["non_embedding_vs_vanilla_pct"].iloc[0]
    assert base["non_embedding_vs_vanilla_pct"].text == f"\u2212{abs(expected):.1f}%"
    # accuracy as the paper's `value / delta vs vanilla` in points (averages: vanilla 41.5, mesh 42.5, base 37.5)
    assert _row(t64, "mesh")["acc_0shot_avg"].text == "42.50 ± 0.71 / +1.00"
    assert _row(t64, "base")["acc_0shot_avg"].text == "37.50 ± 0.71 / \u22124.00"
    assert _row(t64, "mesh")["acc_0shot_avg"].best and not _row(t64, "vanilla")["acc_0shot_avg"].best
    best = min(t64.rows, key=lambda r: r["ppl_validation"].mean)
    assert [r["ppl_validation"].best for r in t64.rows] == [r is best for r in t64.rows]
    # the partial scale: a model never run shows its state, a model with one of two seeds says so
    assert _row(t128, "base")["ppl_validation"].text == "new" and _row(t128, "base")["ppl_validation"].pending
    assert _row(t128, "base")["seeds"].text == "0/2"
    assert _row(t128, "base")["params_non_embedding"].text != "—"  # what the spec implies is known before training
    assert _row(t128, "mesh")["seeds"].text == "1/2 (new)" and _row(t128, "mesh")["ppl_validation"].n == 1
    assert summary.coverage == {"runs": 12, "completed": 9, "states": {"completed": 9, "new": 3}}


def test_markdown_tables_and_footer(report: Any, report_results: Path) -> None:
    from meshctl import __version__
    from meshctl.analysis.report import git_commit, render
    from meshctl.orchestrate.ledger import Ledger
    from meshctl.specs.sweep import sweep_hash

    text = render(report, "markdown")
    assert text.startswith(f"# {NAME}: report test") and "9 of 12 runs completed (3 new)." in text
    tables = re.findall(r"(?:^\|.*\|\n)+", text.split("## Test-time depth")[0], flags=re.M)  # t64 piqa.loops3: test_depth
    assert len(tables) == 2
    for table in tables:
        lines = table.strip().splitlines()
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in lines}
        assert len(widths) == 1, "every row has as many cells as the header"
        assert re.fullmatch(r"\|(-{3}:?\|)+", lines[1]) and len(lines) == 2 + 3
    assert "| **" in text and "*new*" in text
    with Ledger(report_results / "meshctl.sqlite") as ledger:
        spec_hash = sweep_hash(ledger.sweep_spec(NAME))
    footer = text.strip().splitlines()[-1]
    assert f"sweep {NAME}" in footer and f"spec {spec_hash}" in footer and f"meshctl {__version__}" in footer
    assert f"git {git_commit() or 'none'}" in footer and re.search(r"\d{4}-\d\d-\d\dT", footer)


def test_csv_and_json_round_trip_through_pandas(report: Any, tmp_path: Path) -> None:
    import pandas as pd

    from meshctl.analysis.collect import read_csv
    from meshctl.analysis.report import render

    frame = report.frame
    path = tmp_path / "report.csv"
    path.write_text(render(report, "csv"))
    back = read_csv(path)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False, check_exact=True)
    plain = pd.read_csv(path)  # without the helper only text that looks like a number changes type
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not
               pd.api.types.is_bool_dtype(frame[c])]
    pd.testing.assert_frame_equal(plain[numeric], frame[numeric], check_dtype=False, check_exact=True)

    doc = json.loads(render(report, "json"))
    assert doc["columns"] == list(frame.columns) and len(doc["runs"]) == 12
    runs = pd.DataFrame(doc["runs"], columns=doc["columns"])
    pd.testing.assert_frame_equal(runs, frame, check_dtype=False, check_exact=True)
    cells = {(c["group"], c["variant"]): c for c in doc["cells"]}
    assert len(cells) == 6 and cells[("t128", "base")]["completed"] == 0
    assert cells[("t64", "mesh")]["acc_0shot_avg_mean"] == pytest.approx(0.425)
    assert doc["coverage"]["completed"] == 9 and doc["provenance"]["sweep"] == NAME


def test_latex_is_well_formed(report: Any, tmp_path: Path) -> None:
    import shutil

    from meshctl.analysis.report import render

    text = render(report, "latex")
    body = [ln for ln in text.split("% Test-time depth")[0].splitlines() if not ln.startswith("%")]  # see test_depth
    joined = "\n".join(body)
    for env in ("table", "tabular"):
        assert joined.count(f"\\begin{{{env}}}") == joined.count(f"\\end{{{env}}}") == 2
    assert joined.count("\\toprule") == joined.count("\\bottomrule") == 2
    assert joined.count("{") == joined.count("}")
    assert not re.search(r"[_%#]", re.sub(r"\\[_%&#$]", "", joined)), "unescaped special characters"
    for spec, rows in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", joined, flags=re.S):
        lines = [ln for ln in rows.splitlines() if ln.endswith("\\\\")]
        assert len(lines) == 4 and all(len(re.findall(r"(?<!\\)&", ln)) == len(spec) - 1 for ln in lines)
    assert "\\textbf{" in joined and "$\\pm$" in joined
    if shutil.which("pdflatex"):  # compile where a LaTeX is installed
        doc = "\\documentclass{article}\\usepackage{booktabs}\\usepackage[margin=1cm,landscape]{geometry}" \
              f"\\begin{{document}}{text}\\end{{document}}"
        (tmp_path / "r.tex").write_text(doc)
        out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "r.tex"], cwd=tmp_path, capture_output=True)
        assert out.returncode == 0, out.stdout[-2000:]


def test_html_is_well_formed(report: Any) -> None:
    from meshctl.analysis.report import render

    class Parser(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []
            self.counts: dict[str, int] = {}

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            if tag not in ("meta",):
                self.stack.append(tag)
            self.counts[tag] = self.counts.get(tag, 0) + 1

        def handle_endtag(self, tag: str) -> None:
            assert self.stack.pop() == tag

    parser = Parser()
    parser.feed(render(report, "html"))
    assert parser.stack == [] and parser.counts["table"] == 3 and parser.counts["tr"] == 2 * 4 + 3  # + t64 depth
    assert parser.counts["b"] >= 4


def test_plots_are_valid_pngs(report: Any, tmp_path: Path) -> None:
    import matplotlib.image

    from meshctl.analysis.plots import write_plots

    paths = write_plots(report.frame, tmp_path / "plots", report.sweep)
    assert sorted(p.name for p in paths) == ["depth_t64.png", "loss_t128.png", "loss_t64.png", "scaling.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] >= 400 and image.shape[1] >= 600 and image.std() > 0.01
    assert matplotlib.image.imread(tmp_path / "plots" / "scaling.png").shape[1] > 1000  # loss and accuracy panels


def meshctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshctl", *args], capture_output=True, text=True, timeout=120)


def test_cli_json_output_and_files(report_results: Path, tmp_path: Path) -> None:
    out = meshctl("report", "--format", "json", "--results-dir", str(report_results), "--plots", str(tmp_path / "p"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["sweep"] == NAME  # SWEEP defaults to the most recently updated one
    assert "scaling.png" in out.stderr and (tmp_path / "p" / "scaling.png").exists()
    target = tmp_path / "sub" / "table.tex"
    out = meshctl("report", NAME, "--format", "latex", "--output", str(target), "--results-dir", str(report_results))
    assert out.returncode == 0 and out.stdout == "" and target.read_text().count("\\begin{tabular}") == 3  # + t64 depth


def test_cli_refuses_unknown_sweep_and_missing_ledger(report_results: Path, tmp_path: Path) -> None:
    out = meshctl("report", "nope", "--results-dir", str(report_results))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "SWEEP" in out.stderr and f"known: {NAME}" in out.stderr
    out = meshctl("report", "--results-dir", str(tmp_path / "empty"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--results-dir" in out.stderr
    assert not (tmp_path / "empty").exists()


def test_evaluations_on_part_of_a_task_are_recorded(tmp_path: Path) -> None:
    from meshctl.analysis.collect import read_evals

    (tmp_path / "eval").mkdir()
    for task, limit in (("piqa", 50), ("lambada_openai", None)):
        doc = eval_document(tmp_path, task, 0.5, None, None) | {"limit": limit}
        (tmp_path / "eval" / f"{task}.json").write_text(json.dumps(doc))
    out = read_evals(tmp_path)
    assert out["subset_0shot_piqa"] == 50 and "subset_0shot_lambada_openai" not in out
    assert out["subset_0shot_avg"] == 1.0 and out["acc_0shot_tasks"] == 2
    doc = eval_document(tmp_path, "piqa", 0.5, None, None)  # the whole task again
    (tmp_path / "eval" / "piqa.json").write_text(json.dumps(doc))
    assert not [k for k in read_evals(tmp_path) if k.startswith("subset_")]


def test_accuracies_from_part_of_a_task_are_marked(report: Any) -> None:
    """A model any of whose evaluations ran with --limit gets a dagger on that task and on its average,
    and the report says what the dagger means; a report without such evaluations has neither."""
    import dataclasses

    from meshctl.analysis.report import SUBSET_NOTE, render
    from meshctl.analysis.tables import SUBSET_MARK, summarize

    assert SUBSET_MARK not in render(report, "markdown") and SUBSET_NOTE not in render(report, "markdown")
    frame = report.frame.copy()
    mesh = (frame["group"] == "t64") & (frame["variant"] == "mesh") & (frame["seed"] == 1)
    frame.loc[mesh, "subset_0shot_piqa"] = 50.0
    frame.loc[mesh, "subset_0shot_avg"] = 1.0
    marked = dataclasses.replace(report, frame=frame, summary=summarize(frame))
    t64 = next(t for t in marked.summary.tables if t.group == "t64")
    assert _row(t64, "mesh")["acc_0shot_piqa"].text.endswith(SUBSET_MARK)
    assert _row(t64, "mesh")["acc_0shot_avg"].text.startswith("42.50 ± 0.71" + SUBSET_MARK + " / ")
    assert SUBSET_MARK not in _row(t64, "mesh")["acc_0shot_lambada_openai"].text
    assert all(SUBSET_MARK not in cell.text for cell in _row(t64, "vanilla").cells.values())
    assert SUBSET_NOTE in render(marked, "markdown") and html.escape(SUBSET_NOTE) in render(marked, "html")
    body = "\n".join(ln for ln in render(marked, "latex").splitlines() if not ln.startswith("%"))
    assert body.count("\\textsuperscript{\\dag}") == 3  # two cells and the t64 caption's note
    assert body.count("{") == body.count("}")


def _finish(results: Path, planned: list[Any], val_loss: dict[str, float]) -> None:
    """final.json as a completed run leaves it (the fields the report reads), by variant label."""
    for run in planned:
        run_dir = results / "runs" / run.run_id
        run_dir.mkdir(parents=True)
        loss = val_loss[run.labels["variant"]] + 0.01 * run.labels["seed"]
        (run_dir / "final.json").write_text(json.dumps({"val_loss": loss, "perplexity": math.exp(loss)}))


def test_each_row_is_compared_with_the_vanilla_model_it_is_matched_to(tmp_path: Path) -> None:
    """A 6-layer reference given as a preset with changes; and the workaround it replaces (a 6-layer
    variant under the 4-layer preset), whose row must never be compared with the 4-layer model."""
    from meshctl.analysis.report import build_report, render
    from meshctl.models import count_params, resolve

    spec = sweep_spec(tmp_path / "data")
    spec["groups"] = [
        {"name": "d6", "vanilla": {"preset": "tiny-128", "n_layer": 6}, "variants": [{"structure": "1+2R2+1"}]},
        {"name": "workaround", "vanilla": "tiny-128", "variants": [
            {"structure": "1+2R2+1", "recurrence": "anchor", "model": {"n_layer": 6}, "label": "anchor-L6"},
            {"structure": "1+1R2+1", "label": "base-L4"}]},
    ]
    _finish(tmp_path, register(tmp_path, spec), {"vanilla": 5.0, "base": 5.25, "anchor-L6": 5.5, "base-L4": 5.75})
    report = build_report(tmp_path, NAME)
    d6, workaround = report.summary.tables
    reference = count_params(resolve({"preset": "tiny-128", "n_layer": 6})).non_embedding
    base = count_params(resolve({"preset": "tiny-128", "n_layer": 6, "structure": "1+2R2+1"})).non_embedding
    assert reference == 1_189_888 and base == 793_344
    assert _row(d6, "vanilla")["structure"].text == "6" and d6.unmatched == []
    assert _row(d6, "base")["non_embedding_vs_vanilla_pct"].text == "\u221233.3%"
    assert _row(d6, "base")["val_loss"].text == "5.2550 ± 0.0071 / +0.2500"
    # the workaround: the 4-layer variant has its reference, the 6-layer one none (never the 4-layer model)
    assert _row(workaround, "base-L4")["non_embedding_vs_vanilla_pct"].text == "\u221225.0%"
    assert _row(workaround, "base-L4")["val_loss"].text.endswith(" / +0.7500")
    assert _row(workaround, "anchor-L6")["non_embedding_vs_vanilla_pct"].text == "—"
    assert _row(workaround, "anchor-L6")["val_loss"].text == "5.5050 ± 0.0071"
    assert workaround.unmatched == ["anchor-L6 1+2R2+1 (d128 L6)"]
    df = report.frame.set_index(["group", "variant", "seed"])
    assert df.loc[("workaround", "anchor-L6", 0), "shape"] == "d128 L6"
    assert math.isnan(df.loc[("workaround", "anchor-L6", 0), "delta_val_loss_vs_vanilla"])
    assert df.loc[("d6", "base", 1), "delta_val_loss_vs_vanilla"] == pytest.approx(5.26 - 5.005)
    assert "No deltas (—) for workaround: anchor-L6 1+2R2+1 (d128 L6)" in render(report, "markdown")

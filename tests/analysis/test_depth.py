"""Test-time depth in `meshctl report`: recursive models evaluated at loops 1, 2 (trained), 3 and 4 as a
curve per model in every format and in `depth_<group>.png`; nothing of it without such evaluations;
and a real tiny MeSH run evaluated with `meshctl eval --loops 1` and `--loops 3` in the JSON report.

The fake sweep (vanilla, base and mesh 1+1R2+1, two seeds) is registered as `meshctl sweep` does and
finished by writing final.json and eval documents in `meshctl.analysis.evaluation`'s schema."""

from __future__ import annotations

import html.parser
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.analysis.helpers import register

NAME = "depth"
TASKS = {"meshctl_cloze": "acc", "meshctl_cloze_mc": "acc", "meshctl_bpb": "bits_per_byte"}
ACC = {1: 0.30, 2: 0.40, 3: 0.38, 4: 0.35}  # by loops; mesh +0.02, seed +0.01, cloze_mc +0.1
BPB = {1: 2.0, 2: 1.5, 3: 1.6, 4: 1.8}


def sweep_spec() -> dict[str, Any]:
    return {
        "name": NAME, "description": "test-time depth",
        "data": {"path": "/nonexistent", "seq_len": 32},
        "train": {"global_batch": 4, "micro_batch": 4, "tokens": 1280, "precision": "32"},
        "seeds": [0, 1],
        "executor": {"kind": "local", "resources": {"timeout_min": 10}},
        "groups": [{"name": "t64", "vanilla": "tiny-64",
                    "variants": [{"structure": "1+1R2+1", "recurrence": ["base", "mesh"]}]}],
    }


def value(task: str, loops: int, variant: str, seed: int) -> float:
    if TASKS[task] == "bits_per_byte":
        return BPB[loops] - (0.1 if variant == "mesh" else 0.0) + 0.01 * seed
    return ACC[loops] + (0.02 if variant == "mesh" else 0.0) + 0.01 * seed + (0.1 if task == "meshctl_cloze_mc" else 0)


def eval_doc(run_id: str, task: str, primary: float, n_loop: int | None, trained: int | None) -> dict[str, Any]:
    metric = TASKS[task]
    return {"schema": "meshctl.eval/1", "run_id": run_id, "task": task, "num_fewshot": 0, "limit": None,
            "n_loop": n_loop, "trained_n_loop": trained, "checkpoint_step": 10, "metrics": {metric: primary},
            "stderr": {}, "primary_metric": metric, "primary": primary,
            "higher_is_better": {metric: metric == "acc"}, "lm_eval_version": "0.4.13"}


def make_sweep(results: Path, depths: tuple[int, ...]) -> Path:
    """Every run finished; vanilla evaluated once, the recursive runs at `depths` (2 is the trained one)."""
    from meshctl.analysis.evaluation import result_path

    for run in register(results, sweep_spec()):
        run_dir = results / "runs" / run.run_id
        (run_dir / "eval").mkdir(parents=True)
        variant, seed = run.labels["variant"], run.labels["seed"]
        loss = {"vanilla": 5.0, "base": 5.2, "mesh": 5.1}[variant] + 0.01 * seed
        (run_dir / "final.json").write_text(json.dumps({"val_loss": loss, "perplexity": math.exp(loss)}))
        trained = None if variant == "vanilla" else 2
        for task in TASKS:
            for k in (None,) if trained is None else depths:
                doc = eval_doc(run.run_id, task, value(task, k or 2, variant, seed), k, trained)
                path = result_path(run_dir, task, 0, None if k == trained else k)
                path.write_text(json.dumps(doc))
    return results


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from meshctl.analysis.report import build_report

    return build_report(make_sweep(tmp_path_factory.mktemp("depth") / "results", (1, 2, 3, 4)))


def expected(task: str, loops: int, variant: str) -> float:
    return sum(value(task, loops, variant, s) for s in (0, 1)) / 2


def test_every_depth_is_a_column_and_a_tidy_row(report: Any) -> None:
    from meshctl.analysis.depth import depth_frame

    df = report.frame.set_index(["variant", "seed"])
    mesh = df.loc[("mesh", 1)]
    assert mesh["loops3_acc_0shot_meshctl_cloze_mc"] == pytest.approx(value("meshctl_cloze_mc", 3, "mesh", 1))
    assert mesh["loops2_bits_per_byte_0shot_meshctl_bpb"] == pytest.approx(value("meshctl_bpb", 2, "mesh", 1))
    both = (value("meshctl_cloze", 4, "mesh", 1) + value("meshctl_cloze_mc", 4, "mesh", 1)) / 2
    assert mesh["loops4_acc_0shot_avg"] == pytest.approx(both)
    # the table's accuracy is still the trained model's
    assert mesh["acc_0shot_meshctl_cloze_mc"] == pytest.approx(value("meshctl_cloze_mc", 2, "mesh", 1))
    assert math.isnan(df.loc[("vanilla", 0), "loops2_acc_0shot_avg"])

    long = depth_frame(report.frame)
    assert len(long) == 2 * 2 * 4 * (3 + 1)  # variants x seeds x depths x (tasks + average)
    assert set(long["loops"]) == {1, 2, 3, 4} and set(long["trained_loops"]) == {2}
    assert set(long["variant"]) == {"base", "mesh"}
    bpb = long[long["task"] == "meshctl_bpb"]
    assert set(bpb["metric"]) == {"bits_per_byte"} and not bpb["higher_is_better"].any()
    assert long.loc[long["metric"] == "acc", "higher_is_better"].all()


def test_table_rows_models_columns_depths_mean_over_seeds(report: Any) -> None:
    from meshctl.analysis.depth import depth_tables

    (table,) = depth_tables(report.frame)
    assert table.group == "t64" and table.loops == [1, 2, 3, 4]
    assert [(r.model, r.task) for r in table.rows] == [
        (f"{v} 1+1R2+1", t) for v in ("base", "mesh") for t in ("avg", "meshctl_cloze", "meshctl_cloze_mc", "meshctl_bpb")]
    row = next(r for r in table.rows if r.model == "mesh 1+1R2+1" and r.task == "meshctl_cloze_mc")
    assert row.trained == 2 and row.seeds == 2 and row.values[3].n == 2
    assert row.values[3].mean == pytest.approx(expected("meshctl_cloze_mc", 3, "mesh"))
    assert row.text(3) == f"{100 * expected('meshctl_cloze_mc', 3, 'mesh'):.2f}"
    assert row.text(2) == f"{100 * expected('meshctl_cloze_mc', 2, 'mesh'):.2f}*"
    bpb = next(r for r in table.rows if r.model == "mesh 1+1R2+1" and r.task == "meshctl_bpb")
    assert bpb.metric_text == "bits_per_byte \u2193" and row.metric_text == "acc (%) \u2191"
    assert bpb.text(1) == f"{expected('meshctl_bpb', 1, 'mesh'):.4f}"


def _md_section(text: str) -> list[list[str]]:
    section = text.split("## Test-time depth", 1)[1].split("---\n", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]


def test_markdown_section(report: Any) -> None:
    from meshctl.analysis.report import render

    text = render(report, "markdown")
    assert text.count("## Test-time depth") == 1 and "### t64" in text
    header, rule, *rows = _md_section(text)
    assert header == ["model", "task", "metric", "K=1", "K=2", "K=3", "K=4", "seeds"]
    assert len(rows) == 8 and all(len(r) == len(header) for r in rows)
    row = next(r for r in rows if r[0] == "mesh 1+1R2+1" and r[1] == "meshctl_cloze_mc")
    assert row[2] == "acc (%) \u2191" and row[-1] == "2"
    assert row[4] == f"**{100 * expected('meshctl_cloze_mc', 2, 'mesh'):.2f}\\***"  # trained: bold, asterisk
    assert row[5] == f"{100 * expected('meshctl_cloze_mc', 3, 'mesh'):.2f}"
    assert "trained with" in text.split("## Test-time depth", 1)[1]
    assert text.rstrip().splitlines()[-1].startswith(f"sweep {NAME}")  # the footer stays last


def test_csv_carries_the_depth_columns_and_gives_the_table_back(report: Any, tmp_path: Path) -> None:
    from meshctl.analysis.collect import read_csv
    from meshctl.analysis.depth import depth_tables
    from meshctl.analysis.report import render

    path = tmp_path / "r.csv"
    path.write_text(render(report, "csv"))
    back = read_csv(path)
    assert "loops3_acc_0shot_meshctl_cloze" in back.columns
    (table,), (again,) = depth_tables(report.frame), depth_tables(back)
    assert [[r.text(k) for k in table.loops] for r in table.rows] == [[r.text(k) for k in again.loops]
                                                                       for r in again.rows]


def test_json_section(report: Any) -> None:
    from meshctl.analysis.report import render

    doc = json.loads(render(report, "json"))
    (group,) = doc["test_time_depth"]["groups"]
    assert group["group"] == "t64" and group["loops"] == [1, 2, 3, 4]
    row = next(r for r in group["rows"] if r["model"] == "base 1+1R2+1" and r["task"] == "meshctl_bpb")
    assert row["trained_loops"] == 2 and row["metric"] == "bits_per_byte" and row["higher_is_better"] is False
    assert list(row["values"]) == ["1", "2", "3", "4"]
    assert row["values"]["4"]["mean"] == pytest.approx(expected("meshctl_bpb", 4, "base"))
    assert row["values"]["4"]["n"] == 2 and row["values"]["4"]["std"] == pytest.approx(0.01 * 2 ** -0.5)
    assert "loops1_acc_0shot_avg" in doc["columns"]


def test_latex_section(report: Any) -> None:
    from meshctl.analysis.report import render

    text = render(report, "latex")
    body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("%"))
    assert body.count("\\begin{table}") == body.count("\\end{table}") == 2  # the scale's table and its depth
    assert body.count("{") == body.count("}")
    depth = body.split("test-time depth")[0].rsplit("\\begin{tabular}", 1)[1]
    spec, rows = re.match(r"\{(\w+)\}(.*)\\end\{tabular\}", depth, flags=re.S).groups()
    lines = [ln for ln in rows.splitlines() if ln.endswith("\\\\")]
    assert len(lines) == 9 and all(len(re.findall(r"(?<!\\)&", ln)) == len(spec) - 1 for ln in lines)
    mesh = next(ln for ln in lines if ln.startswith("mesh") and "cloze\\_mc" in ln)
    assert f"\\textbf{{{100 * expected('meshctl_cloze_mc', 2, 'mesh'):.2f}$^{{*}}$}}" in mesh
    assert "$\\uparrow$" in mesh and "$\\downarrow$" in body


def test_html_section(report: Any) -> None:
    from meshctl.analysis.report import render

    class Parser(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []
            self.tables = 0

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            if tag != "meta":
                self.stack.append(tag)
            self.tables += tag == "table"

        def handle_endtag(self, tag: str) -> None:
            assert self.stack.pop() == tag

    text = render(report, "html")
    parser = Parser()
    parser.feed(text)
    assert parser.stack == [] and parser.tables == 2
    section = text.split("<h2>Test-time depth</h2>", 1)[1]
    assert f"<b>{100 * expected('meshctl_cloze_mc', 2, 'mesh'):.2f}*</b>" in section
    assert "<th>K=4</th>" in section


def test_plot_has_a_line_per_model_and_the_trained_depth(report: Any, tmp_path: Path) -> None:
    import matplotlib.image

    from meshctl.analysis.depth import depth_figure, depth_frame
    from meshctl.analysis.plots import write_plots

    paths = write_plots(report.frame, tmp_path / "plots", report.sweep)
    assert "depth_t64.png" in [p.name for p in paths]
    image = matplotlib.image.imread(tmp_path / "plots" / "depth_t64.png")
    assert image.shape[1] > 1000 and image.std() > 0.01

    fig = depth_figure(depth_frame(report.frame), "t64")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["avg (higher is better)", "meshctl_cloze (higher is better)",
                                               "meshctl_cloze_mc (higher is better)", "meshctl_bpb (lower is better)"]
    mc, bpb = axes[2], axes[3]
    lines = {ln.get_label(): ln for ln in mc.get_lines()}
    mesh = lines["mesh 1+1R2+1 (trained K=2)"]
    assert list(mesh.get_xdata()) == [1, 2, 3, 4]
    assert list(mesh.get_ydata()) == pytest.approx([100 * expected("meshctl_cloze_mc", k, "mesh") for k in (1, 2, 3, 4)])
    assert list(lines["_trained K=2"].get_xdata()) == [2, 2]  # the vertical marker
    filled = [ln for ln in mc.get_lines() if ln.get_label() == "_trained"]
    assert len(filled) == 2 and all(list(ln.get_xdata()) == [2] for ln in filled)
    base = {ln.get_label(): ln for ln in bpb.get_lines()}["base 1+1R2+1 (trained K=2)"]
    assert list(base.get_ydata()) == pytest.approx([expected("meshctl_bpb", k, "base") for k in (1, 2, 3, 4)])


def test_nothing_appears_without_evaluations_at_other_depths(tmp_path: Path) -> None:
    from meshctl.analysis.plots import write_plots
    from meshctl.analysis.report import build_report, render

    report = build_report(make_sweep(tmp_path / "results", (2,)))
    assert not [c for c in report.frame.columns if c.startswith("loops")]
    assert "Test-time depth" not in render(report, "markdown") and "Test-time depth" not in render(report, "html")
    assert "test-time depth" not in render(report, "latex")
    assert "test_time_depth" not in json.loads(render(report, "json"))
    assert not any(p.name.startswith("depth_") for p in write_plots(report.frame, tmp_path / "p", NAME))


def test_real_evaluations_at_other_depths_show_in_the_json_report(mesh_run: Path, tmp_path: Path) -> None:
    """The tiny 1+1R2+1 MeSH run (trained with 2 loops) evaluated on the offline tasks with --loops 1 and
    --loops 3 (20 documents each), registered as a one-run sweep and finished."""
    from meshctl.cli.app import app
    from meshctl.orchestrate.ledger import Ledger

    results = tmp_path / "results"
    run_dir = results / "runs" / mesh_run.name
    shutil.copytree(mesh_run, run_dir, ignore=shutil.ignore_patterns("eval", "probe"))
    runner = CliRunner()
    for k in ("1", "3"):
        out = runner.invoke(app, ["eval", str(run_dir), "--tasks", "offline", "--loops", k, "--limit", "20",
                                  "--device", "cpu", "--format", "json"])
        assert out.exit_code == 0, out.output
    assert {p.name for p in (run_dir / "eval").glob("*.json")} == {
        f"{t}.loops{k}.json" for t in TASKS for k in (1, 3)}
    (run_dir / "final.json").write_text(json.dumps({"val_loss": 6.0, "perplexity": math.exp(6.0)}))
    spec = json.loads((run_dir / "spec.json").read_text())
    spec["train"]["global_batch"] = spec["train"].get("global_batch") or 16  # the ledger's specs are resolved
    labels = {"sweep": "real", "group": "tiny", "variant": "mesh", "family": "recursive", "recurrence": "mesh",
              "structure": "1+1R2+1", "seed": 0}
    with Ledger(results / "meshctl.sqlite") as ledger:
        ledger.register_sweep("real", "h", {}, None, [(mesh_run.name, spec, run_dir, labels)])

    out = runner.invoke(app, ["report", "--format", "json", "--results-dir", str(results)])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    (group,) = doc["test_time_depth"]["groups"]
    assert group["group"] == "tiny" and group["loops"] == [1, 2, 3]  # the trained depth is a column
    rows = {r["task"]: r for r in group["rows"]}
    assert set(rows) == {"avg", *TASKS}
    for task, row in rows.items():
        assert row["trained_loops"] == 2 and set(row["values"]) == {"1", "3"}, row
    for k in (1, 3):
        on_disk = json.loads((run_dir / "eval" / f"meshctl_cloze_mc.loops{k}.json").read_text())
        assert on_disk["n_loop"] == k and on_disk["trained_n_loop"] == 2
        assert rows["meshctl_cloze_mc"]["values"][str(k)]["mean"] == pytest.approx(on_disk["primary"])
        assert rows["meshctl_cloze_mc"]["values"][str(k)]["subset"] is True
    bpb = rows["meshctl_bpb"]
    assert bpb["metric"] == "bits_per_byte" and bpb["higher_is_better"] is False
    assert 0 < bpb["values"]["1"]["mean"] < 20
    assert doc["runs"][0]["loops3_bits_per_byte_0shot_meshctl_bpb"] == pytest.approx(bpb["values"]["3"]["mean"])

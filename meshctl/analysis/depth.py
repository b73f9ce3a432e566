"""Test-time depth: recursive models evaluated at loop counts other than their trained one
(`meshctl eval RUN --loops K`), as a curve of each task's primary metric against K.

- `depth_columns(docs)` (called by `collect.run_record` with the run's `eval/*.json`): when any was
  evaluated at a depth other than the trained one, each of its evaluations at a known depth becomes a
  column `loops<K>_<metric>_<n>shot_<task>` of the tidy frame (metric as in collect: `acc` for acc and
  acc_norm, else the task's primary metric's name, e.g. `bits_per_byte`), `loops<K>_subset_<n>shot_<task>`
  the --limit of one on part of the task, and `loops<K>_acc_<n>shot_avg` the mean accuracy over the
  tasks (the paper's where any ran) evaluated at every depth of the run, where there are two or more.
  A run evaluated at its trained depth only has none of these columns, so nothing changes for it.
- `depth_frame(frame)`: those columns of the completed runs as a tidy long frame (DEPTH_COLUMNS), one
  row per run, task, few-shot setting and depth; it works on a frame read back from the report's CSV.
- `depth_tables(frame)`: per group, one row per recursive model and task evaluated at two depths or
  more (`curves`), one column per K, the mean over seeds; the trained depth is marked with `*`. Renderers for each report format follow
  (`markdown_lines`, `latex_lines`, `html_lines`, `json_section`; CSV carries the columns above).
- `write_depth_plots(frame, out_dir)`: `depth_<group>.png`, one panel per task (and the average), one
  line per model against K, the trained depth a filled point and a dotted vertical line.

Whether higher is better is told by the metric's name: perplexities, bits per byte and losses are lower
is better, everything else (accuracies) higher.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from matplotlib.figure import Figure

    from meshctl.analysis.report import Report

TRAINED_MARK = "*"
UP, DOWN = "\u2191", "\u2193"
COLUMN = re.compile(r"^loops(\d+)_(.+?)_(\d+)shot_(.+)$")
LOWER_IS_BETTER = ("bits_per_byte", "byte_perplexity", "word_perplexity", "perplexity", "ppl", "loss")
DEPTH_COLUMNS = ["group", "cell", "model", "variant", "structure", "family", "recurrence", "seed", "run_id",
                 "task", "num_fewshot", "metric", "higher_is_better", "loops", "trained_loops", "value", "subset"]
DEPTH_NOTE = ("Test-time depth: each task's primary metric for a recursive model evaluated at K loops of its "
              "shared core (meshctl eval RUN --loops K), mean over seeds; acc in %; "
              f"{UP} higher is better, {DOWN} lower is better; {TRAINED_MARK} (bold): the depth the model was "
              "trained with.")


def higher_is_better(metric: str) -> bool:
    return not any(metric == name or metric.endswith(name) for name in LOWER_IS_BETTER)


def depth_columns(docs: list[dict[str, Any]]) -> dict[str, float]:
    """`loops<K>_*` columns of one run from its eval documents (`collect.eval_documents`; see the module
    docstring); empty unless the run was evaluated at a depth other than its trained one."""
    from meshctl.analysis.collect import averaged_tasks, primary_value

    docs = [d for d in docs if isinstance(d.get("n_loop"), int) and not isinstance(d.get("n_loop"), bool)]
    if not any(d["n_loop"] != d.get("trained_n_loop", d["n_loop"]) for d in docs):
        return {}
    out: dict[str, float] = {}
    accuracy: dict[int, dict[int, set[str]]] = {}  # shot -> K -> accuracy tasks
    for doc in docs:
        primary = primary_value(doc)
        if primary is None:
            continue
        metric, value = primary
        k, shot, task = doc["n_loop"], int(doc.get("num_fewshot") or 0), doc["task"]
        out[f"loops{k}_{metric}_{shot}shot_{task}"] = value
        if isinstance(doc.get("limit"), (int, float)):
            out[f"loops{k}_subset_{shot}shot_{task}"] = float(doc["limit"])
        if metric == "acc":
            accuracy.setdefault(shot, {}).setdefault(k, set()).add(task)
    for shot, by_depth in accuracy.items():
        common = averaged_tasks(sorted(set.intersection(*by_depth.values())))
        if len(common) < 2:
            continue
        for k in by_depth:
            out[f"loops{k}_acc_{shot}shot_avg"] = sum(out[f"loops{k}_acc_{shot}shot_{t}"] for t in common) / len(common)
    return out


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _labels(done: "pd.DataFrame") -> dict[Any, str]:
    """cell -> `variant structure`, with the shape or the cell id added where two models would share one."""
    labels: dict[Any, str] = {}
    for cell, runs in done.groupby("cell", sort=False):
        first = runs.iloc[0]
        labels[cell] = f"{first['variant']} {first['structure']}"
    for cell, label in list(labels.items()):
        if list(labels.values()).count(label) > 1:
            labels[cell] = f"{label} [{str(cell)[:6]}]"
    return labels


def depth_frame(frame: "pd.DataFrame") -> "pd.DataFrame":
    """The completed runs' `loops<K>_*` columns as a tidy long frame (DEPTH_COLUMNS)."""
    import pandas as pd

    columns = [(c, m) for c in frame.columns if (m := COLUMN.match(str(c))) and m.group(2) != "subset"]
    if not columns or frame.empty:
        return pd.DataFrame(columns=DEPTH_COLUMNS)
    done = frame[frame["state"] == "completed"] if "state" in frame else frame
    if "position" in done:
        done = done.sort_values("position")
    records = []
    for group, runs in done.groupby("group", sort=False):
        labels = _labels(runs)
        for _, run in runs.iterrows():
            trained = run.get("model.n_loop")
            for column, match in columns:
                value = run[column]
                if not _present(value):
                    continue
                k, metric, shot, task = int(match.group(1)), match.group(2), int(match.group(3)), match.group(4)
                subset = run.get(f"loops{k}_subset_{shot}shot_{task}")
                records.append({
                    "group": group, "cell": run["cell"], "model": labels[run["cell"]], "variant": run["variant"],
                    "structure": run["structure"], "family": run["family"], "recurrence": run.get("recurrence"),
                    "seed": run.get("seed"), "run_id": run["run_id"], "task": task, "num_fewshot": shot,
                    "metric": metric, "higher_is_better": higher_is_better(metric), "loops": k,
                    "trained_loops": int(trained) if _present(trained) else None, "value": float(value),
                    "subset": float(subset) if _present(subset) else None,
                })
    return pd.DataFrame.from_records(records, columns=DEPTH_COLUMNS)


def curves(long: "pd.DataFrame") -> "pd.DataFrame":
    """The rows of `depth_frame` on a curve: a model's task evaluated at two depths or more."""
    if long.empty:
        return long
    depths = long.groupby(["group", "cell", "task", "num_fewshot", "metric"])["loops"].transform("nunique")
    return long[depths >= 2]


@dataclass
class DepthValue:
    mean: float
    std: float | None
    n: int
    subset: bool = False


@dataclass
class DepthRow:
    model: str
    task: str
    num_fewshot: int
    metric: str
    higher_is_better: bool
    trained: int | None
    seeds: int
    values: dict[int, DepthValue] = field(default_factory=dict)

    @property
    def task_text(self) -> str:
        return self.task + (f" {self.num_fewshot}-shot" if self.num_fewshot else "")

    @property
    def metric_text(self) -> str:
        return (f"{self.metric} (%)" if self.metric == "acc" else self.metric) + \
            f" {UP if self.higher_is_better else DOWN}"

    def text(self, k: int) -> str:
        value = self.values.get(k)
        if value is None:
            text = "—"
        else:
            from meshctl.analysis.tables import SUBSET_MARK

            text = f"{100 * value.mean:.2f}" if self.metric == "acc" else f"{value.mean:.4f}"
            text += SUBSET_MARK if value.subset else ""
        return text + (TRAINED_MARK if k == self.trained else "")


@dataclass
class DepthTable:
    group: str
    loops: list[int]
    rows: list[DepthRow]

    @property
    def has_subset(self) -> bool:
        return any(v.subset for r in self.rows for v in r.values.values())


def _task_order(task: str, metric: str) -> tuple[int, int, int, str]:
    """The average first, then the paper's tasks in its order, other accuracies, other metrics."""
    from meshctl.analysis.evaluation import PAPER_METRICS

    order = list(PAPER_METRICS)
    return (task != "avg", order.index(task) if task in order else len(order), metric != "acc", task)


def depth_tables(frame: "pd.DataFrame") -> list[DepthTable]:
    """Per group with test-time-depth evaluations: rows = (model, task), columns = K; empty when none."""
    long = curves(depth_frame(frame))
    tables = []
    for group, rows in long.groupby("group", sort=False):
        out = []
        for (_, task, shot, metric), series in rows.groupby(["cell", "task", "num_fewshot", "metric"], sort=False):
            trained = series["trained_loops"].dropna()
            row = DepthRow(str(series["model"].iloc[0]), str(task), int(shot), str(metric),
                           bool(series["higher_is_better"].iloc[0]), int(trained.iloc[0]) if len(trained) else None,
                           int(series["run_id"].nunique()))
            for k, points in series.groupby("loops"):
                values = points["value"]
                row.values[int(k)] = DepthValue(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1
                                                else None, int(len(values)), bool(points["subset"].notna().any()))
            out.append(row)
        models = list(dict.fromkeys(r.model for r in out))
        out.sort(key=lambda r: (models.index(r.model), r.num_fewshot, _task_order(r.task, r.metric)))
        loops = sorted({int(k) for k in rows["loops"]} | {r.trained for r in out if r.trained is not None})
        tables.append(DepthTable(str(group), loops, out))
    return tables


def _note(tables: list[DepthTable]) -> str:
    from meshctl.analysis.report import SUBSET_NOTE

    return DEPTH_NOTE + (f" {SUBSET_NOTE}" if any(t.has_subset for t in tables) else "")


def markdown_lines(report: "Report") -> list[str]:
    """`## Test-time depth` with one table per group; nothing when no run was evaluated at another depth."""
    tables = depth_tables(report.frame)
    if not tables:
        return []
    out = ["## Test-time depth", "", _note(tables), ""]
    for table in tables:
        out += [f"### {table.group}", "",
                "| model | task | metric | " + " | ".join(f"K={k}" for k in table.loops) + " | seeds |",
                "|---|---|---|" + "---:|" * len(table.loops) + "---:|"]
        for row in table.rows:
            cells = []
            for k in table.loops:
                text = row.text(k).replace("|", "\\|").replace("*", "\\*")
                cells.append(f"**{text}**" if k == row.trained and k in row.values else text)
            out.append(f"| {row.model} | {row.task_text} | {row.metric_text} | " + " | ".join(cells)
                       + f" | {row.seeds} |")
        out.append("")
    return out


def latex_lines(report: "Report") -> list[str]:
    """One booktabs table per group (\\usepackage{booktabs}); nothing without test-time-depth evaluations."""
    from meshctl.analysis.report import latex_escape

    def esc(text: str) -> str:
        return latex_escape(text).replace(UP, "$\\uparrow$").replace(DOWN, "$\\downarrow$")

    tables = depth_tables(report.frame)
    out: list[str] = ["% Test-time depth"] if tables else []
    for table in tables:
        spec = "lll" + "r" * len(table.loops) + "r"
        out += ["\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                " & ".join(["model", "task", "metric", *(f"$K={k}$" for k in table.loops), "seeds"]) + " \\\\",
                "\\midrule"]
        for row in table.rows:
            cells = []
            for k in table.loops:
                text = esc(row.text(k).removesuffix(TRAINED_MARK)) + ("$^{*}$" if k == row.trained else "")
                cells.append(f"\\textbf{{{text}}}" if k == row.trained and k in row.values else text)
            out.append(" & ".join([esc(row.model), esc(row.task_text), esc(row.metric_text), *cells,
                                   str(row.seeds)]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}",
                f"\\caption{{{esc(report.sweep)}, scale {esc(table.group)}: test-time depth. {esc(_note([table]))}}}",
                f"\\label{{tab:{_label(report.sweep)}-{_label(table.group)}-depth}}", "\\end{table}", ""]
    return out


def _label(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text)


def html_lines(report: "Report") -> list[str]:
    import html

    e = html.escape
    tables = depth_tables(report.frame)
    if not tables:
        return []
    out = ["<h2>Test-time depth</h2>", f"<p>{e(_note(tables))}</p>"]
    for table in tables:
        out += [f"<h3>{e(table.group)}</h3>", "<table>", "<thead><tr>"
                + "".join(f"<th>{e(h)}</th>" for h in ["model", "task", "metric", *(f"K={k}" for k in table.loops),
                                                       "seeds"]) + "</tr></thead>", "<tbody>"]
        for row in table.rows:
            cells = [f"<td>{e(row.model)}</td>", f"<td>{e(row.task_text)}</td>", f"<td>{e(row.metric_text)}</td>"]
            for k in table.loops:
                text = e(row.text(k))
                cells.append(f"<td class=\"num\">{f'<b>{text}</b>' if k == row.trained else text}</td>")
            cells.append(f"<td class=\"num\">{row.seeds}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out += ["</tbody>", "</table>"]
    return out


def json_section(report: "Report") -> dict[str, Any]:
    """`{"test_time_depth": {"note", "groups": [...]}}`, or {} without test-time-depth evaluations. Per
    group: `loops` and `rows` (model, task, num_fewshot, metric, higher_is_better, trained_loops, seeds,
    `values` {K: {mean, std, n, subset}} with K as a string, as JSON keys are)."""
    tables = depth_tables(report.frame)
    if not tables:
        return {}
    groups = [{
        "group": t.group, "loops": t.loops,
        "rows": [{"model": r.model, "task": r.task, "num_fewshot": r.num_fewshot, "metric": r.metric,
                  "higher_is_better": r.higher_is_better, "trained_loops": r.trained, "seeds": r.seeds,
                  "values": {str(k): {"mean": v.mean, "std": v.std, "n": v.n, "subset": v.subset}
                             for k, v in sorted(r.values.items())}} for r in t.rows],
    } for t in tables]
    return {"test_time_depth": {"note": _note(tables), "groups": groups}}


MESH_COLOURS = ("tab:red", "tab:orange", "darkred", "salmon")
COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink", "tab:gray")


def depth_figure(long: "pd.DataFrame", group: str) -> "Figure":
    """One panel per (task, few-shot), one line per model (mean over seeds) against K; the trained depth
    is a filled point on the model's line and a dotted vertical line labelled `trained K=<k>`."""
    from matplotlib.figure import Figure

    rows = curves(long[long["group"] == group])
    panels = list(dict.fromkeys((r.num_fewshot, r.task, r.metric) for r in rows.itertuples()))
    panels.sort(key=lambda p: (p[0], _task_order(p[1], p[2])))
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(max(4.8 * ncols, 6.4), 3.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    models = list(dict.fromkeys(rows["model"]))
    colours, mesh, plain = {}, 0, 0
    for model in models:
        is_mesh = (rows.loc[rows["model"] == model, "recurrence"] == "mesh").any()
        colours[model] = MESH_COLOURS[mesh % 4] if is_mesh else COLOURS[plain % len(COLOURS)]
        mesh, plain = mesh + bool(is_mesh), plain + (not is_mesh)
    for ax, (shot, task, metric) in zip(axes, panels):
        scale = 100.0 if metric == "acc" else 1.0
        panel = rows[(rows["task"] == task) & (rows["num_fewshot"] == shot) & (rows["metric"] == metric)]
        trained_depths = set()
        for model, series in panel.groupby("model", sort=False):
            means = series.groupby("loops")["value"].mean().sort_index()
            xs, ys = [int(k) for k in means.index], [scale * float(v) for v in means]
            trained = series["trained_loops"].dropna()
            trained = int(trained.iloc[0]) if len(trained) else None
            ax.plot(xs, ys, color=colours[model], marker="o", markerfacecolor="white", linewidth=1.6,
                    label=model + (f" (trained K={trained})" if trained is not None else ""))
            if trained in xs:
                ax.plot([trained], [ys[xs.index(trained)]], color=colours[model], marker="o", markersize=8,
                        linestyle="none", label="_trained")
            if trained is not None:
                trained_depths.add(trained)
        for k in sorted(trained_depths):
            ax.axvline(k, color="gray", linestyle=":", linewidth=1.2, label=f"_trained K={k}")
        better = "higher" if higher_is_better(metric) else "lower"
        ax.set_title(f"{task}" + (f" {shot}-shot" if shot else "") + f" ({better} is better)", fontsize=10)
        ax.set_xlabel("test-time loops K")
        ax.set_ylabel(f"{metric} (%)" if metric == "acc" else metric)
        ax.set_xticks(sorted({int(k) for k in panel["loops"]} | trained_depths))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{group}: test-time depth (filled point, dotted line: trained depth)")
    fig.tight_layout()
    return fig


def write_depth_plots(frame: "pd.DataFrame", out_dir: str | Path) -> list[Path]:
    """`depth_<group>.png` for every group with test-time-depth evaluations; none otherwise."""
    long = curves(depth_frame(frame))
    paths = []
    for group in dict.fromkeys(long["group"]):
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in str(group))
        path = Path(out_dir) / f"depth_{safe}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        depth_figure(long, str(group)).savefig(path, dpi=120)
        paths.append(path)
    return paths

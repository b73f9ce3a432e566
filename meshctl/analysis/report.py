"""`meshctl report`: a sweep's tables as markdown, LaTeX or HTML, its runs as tidy CSV or JSON.

`build_report(results_dir, sweep)` collects the tidy frame (`meshctl.analysis.collect`) and the
per-scale tables (`meshctl.analysis.tables`); `render(report, fmt)` writes one format. The text
formats end with a provenance footer: sweep, spec hash (the ledger's hash of the sweep's YAML
mapping), meshctl version, git commit of the meshctl checkout (none when not one), UTC date.
CSV is the tidy frame; JSON is one document: provenance, coverage, the keys the variants differ in,
`runs` (the tidy frame, one record per run, NaN as null: `pandas.DataFrame(doc["runs"])` gives it
back), `cells` (per model: the seeds' mean, std and count of each result column) and `paired`.

Paired statistics (`meshctl.analysis.comparisons`): every text format lists, under each scale's table,
one verdict per variant against base and against vanilla. JSON `paired` has one record per comparison:
group, metric (`val_loss`, `acc_<k>shot_avg`), better (`lower`|`higher`), variant, reference (`base`|
`vanilla`), reference_variant, paired (both planned on the same seeds), variant_seeds, reference_seeds,
seeds (the completed pairs), pending_seeds, differences (variant - reference per pair, frame units:
nats, accuracy fractions), n, mean, sd, ci_level, ci_low, ci_high (Student t; null below 2 pairs), wins
(pairs where the variant is better), excludes_zero, verdict. The tidy frame (CSV, JSON `runs`) carries
them as `paired_<metric>_vs_<reference>` (the run minus the reference's run of its seed) and
`paired_<metric>_vs_<reference>_{mean,sd,ci_low,ci_high,n,wins,verdict}` on every run of the variant.
"""

from __future__ import annotations

import html
import io
import json
import math
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshctl.analysis import depth
from meshctl.analysis.comparisons import record, with_columns
from meshctl.analysis.tables import MINUS, SUBSET_MARK, GroupTable, Summary, coverage_line, summarize
from meshctl.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("markdown", "csv", "latex", "json", "html")
COLUMN_NOTES = (
    "non-emb params: weights stored outside the embeddings (a shared core counted once); "
    "Δ non-emb: change vs the reference (the group's vanilla model of the same width and unrolled depth); "
    "FLOPs/token: training FLOPs per token (palm formula: 6(N + V·d) + 12·L·d·T, unrolled layers); "
    "tokens: planned training tokens; "
    "val loss: validation loss (nats/token, first eval set) / delta vs the reference; "
    "PPL: validation perplexity per eval set; k-shot avg: mean accuracy (%) over the evaluated tasks "
    "/ delta vs the reference in points; seeds: completed/planned runs. Bold: best per scale and column. "
    "mean ± std over seeds; an unfinished model shows its state."
)

UNMATCHED_NOTE = ("No deltas (—) for {}: the group has no vanilla model of that width and unrolled depth to "
                  "compare with; make it the group's reference (e.g. vanilla: {{preset: tiny-128, n_layer: 6}}).")
PAIRED_HEADING = (f"Paired over seeds (variant {MINUS} reference on the same seed: mean ± sd of the differences, "
                  "Student-t 95% CI, seeds where the variant is better):")
SUBSET_NOTE = (f"{SUBSET_MARK}: from evaluations on a subset of the documents (meshctl eval --limit), "
               "not comparable with whole-task accuracies.")


@dataclass
class Report:
    sweep: str
    description: str
    frame: "pd.DataFrame"
    summary: Summary
    provenance: dict[str, Any]


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the meshctl checkout (with `-dirty` for local changes); None outside git."""
    where = path or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(sweep: str, raw_spec: dict[str, Any] | None) -> dict[str, Any]:
    from meshctl import __version__
    from meshctl.specs.sweep import sweep_hash

    return {
        "sweep": sweep,
        "spec_hash": sweep_hash(raw_spec) if raw_spec is not None else None,
        "meshctl_version": __version__,
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def build_report(results_dir: str | Path, sweep: str | None = None) -> Report:
    from meshctl.analysis.collect import collect, resolve_sweep
    from meshctl.layout import ledger_path
    from meshctl.orchestrate.ledger import Ledger

    name = resolve_sweep(results_dir, sweep)
    frame = collect(results_dir, name)
    with Ledger(ledger_path(results_dir)) as ledger:
        raw = ledger.sweep_spec(name)
    if frame.empty:
        raise BadInput(f"SWEEP: sweep {name!r} has no runs in {ledger_path(results_dir)}")
    summary = summarize(frame)
    frame = with_columns(frame, [c for t in summary.tables for c in t.paired])
    return Report(name, str((raw or {}).get("description") or ""), frame, summary, provenance(name, raw))


def _footer(p: dict[str, Any]) -> str:
    return (f"sweep {p['sweep']} · spec {p['spec_hash'] or 'unknown'} · meshctl {p['meshctl_version']} · "
            f"git {p['git_commit'] or 'none'} · {p['date']}")


def _intro(report: Report) -> list[str]:
    lines = [coverage_line(report.summary.coverage)]
    if report.summary.varying:
        lines.append("Variants differ in: " + ", ".join(report.summary.varying) + " (from the run specs).")
    if any(_has_subset_cells(table) for table in report.summary.tables):
        lines.append(SUBSET_NOTE)
    unmatched = [f"{t.group}: {', '.join(t.unmatched)}" for t in report.summary.tables if t.unmatched]
    if unmatched:
        lines.append(UNMATCHED_NOTE.format("; ".join(unmatched)))
    return lines


def _has_subset_cells(table: GroupTable) -> bool:
    return any(SUBSET_MARK in cell.text for row in table.rows for cell in row.cells.values())


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(report: Report) -> str:
    out = [f"# {report.sweep}" + (f": {report.description}" if report.description else ""), ""]
    out += [" ".join(_intro(report)), ""]
    for table in report.summary.tables:
        out += [f"## {table.group}", ""]
        cols = table.columns
        out.append("| " + " | ".join(_md_escape(c.header) for c in cols) + " |")
        out.append("|" + "|".join("---" if c.kind == "id" else "---:" for c in cols) + "|")
        for row in table.rows:
            cells = []
            for c in cols:
                cell = row[c.key]
                text = _md_escape(cell.text)
                cells.append(f"**{text}**" if cell.best else (f"*{text}*" if cell.pending else text))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        if table.paired:
            out += [PAIRED_HEADING, "", *(f"- {c.verdict}" for c in table.paired), ""]
    out += [COLUMN_NOTES, "", *depth.markdown_lines(report), "---", "", _footer(report.provenance), ""]
    return "\n".join(out)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {MINUS: "$-$", "±": "$\\pm$", "Δ": "$\\Delta$", "—": "---", "·": "$\\cdot$",
                  SUBSET_MARK: "\\textsuperscript{\\dag}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    for symbol, command in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, command)
    return out


def to_latex(report: Report) -> str:
    """One booktabs `table` per scale; needs `\\usepackage{booktabs}`."""
    out = [f"% {report.sweep}: {latex_escape(' '.join(_intro(report)))}", "% requires \\usepackage{booktabs}"]
    for table in report.summary.tables:
        cols = table.columns
        spec = "".join("l" if c.kind == "id" else "r" for c in cols)
        out += ["\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                " & ".join(latex_escape(c.header) for c in cols) + " \\\\", "\\midrule"]
        for row in table.rows:
            cells = []
            for c in cols:
                text = latex_escape(row[c.key].text)
                cells.append(f"\\textbf{{{text}}}" if row[c.key].best else
                             (f"\\textit{{{text}}}" if row[c.key].pending else text))
            out.append(" & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        if table.paired:
            lines = [latex_escape(PAIRED_HEADING), *(latex_escape(c.verdict) for c in table.paired)]
            out += ["\\par\\smallskip{\\footnotesize", " \\\\\n".join(lines) + "}"]
        out += [f"\\caption{{{latex_escape(report.sweep)}, scale {latex_escape(table.group)}. "
                f"{latex_escape(coverage_line(report.summary.coverage))}"
                + (f" {latex_escape(SUBSET_NOTE)}" if _has_subset_cells(table) else "") + "}",
                f"\\label{{tab:{_label(report.sweep)}-{_label(table.group)}}}", "\\end{table}", ""]
    out += depth.latex_lines(report)
    out.append(f"% {latex_escape(_footer(report.provenance))}")
    return "\n".join(out) + "\n"


def _label(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text)


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "th,td{padding:.3em .7em;border-bottom:1px solid #ddd}th{border-bottom:2px solid #444}"
        "td.num{text-align:right;font-variant-numeric:tabular-nums}td.pending{color:#888;font-style:italic}"
        "footer{color:#666;font-size:.9em;margin-top:2em}")


def to_html(report: Report) -> str:
    e = html.escape
    title = f"{report.sweep}" + (f": {report.description}" if report.description else "")
    out = ["<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\">", f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>",
           f"<p>{e(' '.join(_intro(report)))}</p>"]
    for table in report.summary.tables:
        cols = table.columns
        out += [f"<h2>{e(table.group)}</h2>", "<table>", "<thead><tr>" + "".join(f"<th>{e(c.header)}</th>" for c in cols)
                + "</tr></thead>", "<tbody>"]
        for row in table.rows:
            cells = []
            for c in cols:
                cell = row[c.key]
                klass = "pending" if cell.pending else ("num" if c.kind != "id" else "")
                text = f"<b>{e(cell.text)}</b>" if cell.best else e(cell.text)
                cells.append(f"<td class=\"{klass}\">{text}</td>" if klass else f"<td>{text}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out += ["</tbody>", "</table>"]
        if table.paired:
            out += [f"<p>{e(PAIRED_HEADING)}</p>", "<ul class=\"paired\">",
                    *(f"<li>{e(c.verdict)}</li>" for c in table.paired), "</ul>"]
    out += [f"<p>{e(COLUMN_NOTES)}</p>", *depth.html_lines(report),
            f"<footer>{e(_footer(report.provenance))}</footer>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def to_csv(report: Report) -> str:
    buffer = io.StringIO()
    report.frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    if isinstance(value, int):
        return value
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def records(frame: "pd.DataFrame") -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def cells(report: Report) -> list[dict[str, Any]]:
    """Per model (runs differing only by seed): mean, std and count of every result column."""
    df = report.frame
    id_cols = [c for c in ("group", "variant", "family", "recurrence", "mesh_slots", "structure", "shape",
                           "cell") if c in df]
    results = [c for c in df.columns if c in ("train_loss", "val_loss", "perplexity")
               or c.startswith(("val_loss_", "ppl_", "acc_", "delta_"))]
    out = []
    for _, runs in df.sort_values("position").groupby("cell", sort=False):
        done = runs[runs["state"] == "completed"]
        row = {c: _jsonable(runs.iloc[0][c]) for c in id_cols}
        row.update(seeds=int(len(runs)), completed=int(len(done)),
                   states={str(k): int(v) for k, v in runs["state"].value_counts().items()})
        for c in results:
            values = done[c].dropna()
            row[f"{c}_mean"] = float(values.mean()) if len(values) else None
            row[f"{c}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
            row[f"{c}_n"] = int(len(values))
        out.append(row)
    return out


def to_json(report: Report) -> str:
    document = {
        "sweep": report.sweep,
        "description": report.description,
        "provenance": report.provenance,
        "coverage": report.summary.coverage,
        "varying": report.summary.varying,
        "eval_sets": report.summary.eval_sets,
        "columns": list(report.frame.columns),
        "runs": records(report.frame),
        "cells": cells(report),
        "paired": [record(c) for t in report.summary.tables for c in t.paired],
    }
    document.update(depth.json_section(report))
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


RENDERERS = {"markdown": to_markdown, "csv": to_csv, "latex": to_latex, "json": to_json, "html": to_html}


def render(report: Report, fmt: str) -> str:
    if fmt not in RENDERERS:
        raise BadInput(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](report)

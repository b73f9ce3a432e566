"""The paper's tables from the tidy frame: one table per scale group, one row per model (seeds averaged).

Layout of Table 1 (reference/mesh-paper.md §5.1): rows vanilla, then the recursive variants and MeSH in
the sweep's order; columns the variant, its structure (`4+8R2+4`; a vanilla model's layer count), the
keys the group's variants differ in (found in the specs: `B` = mesh_slots for Table 3, the recurrence
scheme for Table 4, the family for Table 6; a key equal to the variant name row by row is not repeated),
non-embedding parameters and their change vs the row's reference, FLOPs/token (formula named), tokens,
validation loss and perplexity per eval set, downstream average accuracy with its delta vs the reference
(absolute points) and per-task accuracy where evaluations exist, and the seeds completed. The reference
of a row is the group's vanilla model of its width and unrolled depth (`shape`, see collect); a row of
no vanilla model's shape shows no deltas and is listed in `GroupTable.unmatched` for the report's note.

A cell of several seeds is `mean ± std` (sample std); a model none of whose runs completed shows its
state instead (`running 120/300`). The best value per group and result column is marked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from meshctl.analysis.collect import fewshots

if TYPE_CHECKING:
    import pandas as pd

    from meshctl.analysis.comparisons import Comparison

MINUS = "\u2212"
SUBSET_MARK = "\u2020"  # an accuracy from evaluations on part of a task's documents (`meshctl eval --limit`)
# Keys a group's variants may differ in, in column order; spec fields outside these and the
# execution-only ones below are found generically (`model.*`, `train.*`).
LABEL_KEYS = ("family", "structure", "recurrence", "mesh_slots")
HEADERS = {"mesh_slots": "B", "recurrence": "scheme", "family": "family", "structure": "structure"}
NOT_VARYING = {
    "model.family", "model.recurrence", "model.mesh_slots", "model.n_layer", "model.n_prelude", "model.n_core",
    "model.n_loop", "model.n_coda", "train.max_steps", "train.tokens", "train.devices", "train.num_nodes",
    "train.strategy", "train.micro_batch", "train.log_every", "train.val_every", "train.ckpt_every",
    "train.val_batches", "train.compile", "train.deterministic", "data.path",
}


@dataclass
class Column:
    key: str
    header: str
    kind: Literal["id", "config", "result", "seeds"]
    better: Literal["min", "max"] | None = None


@dataclass
class Cell:
    text: str
    mean: float | None = None
    std: float | None = None
    n: int = 0
    best: bool = False
    pending: bool = False  # the state of unfinished runs, shown instead of a value


@dataclass
class Row:
    """One model of a scale (its seeds together): a cell per column key."""

    family: str
    cells: dict[str, Cell]
    shape: str | None = None  # width and unrolled depth: the vanilla row of the same shape is the reference

    def __getitem__(self, key: str) -> Cell:
        return self.cells[key]


@dataclass
class GroupTable:
    group: str
    columns: list[Column]
    rows: list[Row]
    unmatched: list[str] = field(default_factory=list)  # rows with no reference: `base 1+2R2+1 (d128 L6)`
    paired: list["Comparison"] = field(default_factory=list)  # each variant vs base and vanilla, seed by seed


@dataclass
class Summary:
    tables: list[GroupTable]
    varying: list[str]  # keys the variants differ in, over all groups
    eval_sets: list[str]
    coverage: dict[str, Any] = field(default_factory=dict)


def human(value: float) -> str:
    """1_208_602_624 -> '1.209B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{unit}"
    return f"{value:.4g}"


def signed(value: float, digits: int = 2, unit: str = "") -> str:
    text = f"{abs(value):.{digits}f}"
    if float(text) == 0.0:
        return f"+{text}{unit}" if value >= 0 else f"{MINUS}{text}{unit}"
    return f"{'+' if value > 0 else MINUS}{text}{unit}"


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def state_text(runs: "pd.DataFrame") -> str:
    """`running 120/300`, one entry per distinct state among unfinished runs."""
    parts: list[str] = []
    for _, run in runs.iterrows():
        if run["state"] == "completed":
            continue
        text = str(run["state"])
        if _present(run.get("step")) and _present(run.get("total_steps")) and run["state"] != "new":
            text += f" {int(run['step'])}/{int(run['total_steps'])}"
        if text not in parts:
            parts.append(text)
    return ", ".join(parts)


def varying_keys(df: "pd.DataFrame") -> list[str]:
    """Keys taking more than one value among a group's non-vanilla runs, in any group."""
    candidates = [*LABEL_KEYS, *(c for c in df.columns if c.startswith(("model.", "train.", "data."))
                                 and c not in NOT_VARYING)]
    variants = df[df["family"] != "vanilla"]
    found = []
    for key in candidates:
        if key in variants and any(g[key].dropna().astype(str).nunique() > 1 for _, g in variants.groupby("group")):
            found.append(key)
    return found


def _result_columns(df: "pd.DataFrame") -> list[Column]:
    cols = [Column("val_loss", "val loss", "result", "min")]
    primary = df["eval_set"].dropna().iloc[0] if "eval_set" in df and df["eval_set"].notna().any() else None
    sets = sorted((c.removeprefix("ppl_") for c in df.columns if c.startswith("ppl_")),
                  key=lambda s: (s != primary, s))
    cols += [Column(f"ppl_{s}", f"PPL {s}", "result", "min") for s in sets]
    for k in fewshots(df.columns):
        cols.append(Column(f"acc_{k}shot_avg", f"{k}-shot avg", "result", "max"))
        prefix = f"acc_{k}shot_"
        tasks = [c.removeprefix(prefix) for c in df.columns if c.startswith(prefix)]
        tasks = sorted((t for t in tasks if t not in ("avg", "tasks")), key=lambda t: (_task_rank(t), t))
        cols += [Column(prefix + t, f"{t} {k}-shot", "result", "max") for t in tasks]
    return cols


def _task_rank(task: str) -> int:
    """The paper's task order (reference/mesh-paper.md §4), other tasks after it."""
    from meshctl.analysis.evaluation import PAPER_METRICS

    order = list(PAPER_METRICS)
    return order.index(task) if task in order else len(order)


def _id_columns(group: "pd.DataFrame", varying: list[str]) -> list[Column]:
    cols = [Column("variant", "variant", "id"), Column("structure", "structure", "id")]
    for key in varying:
        if key == "structure":
            continue
        variants = group[group["family"] != "vanilla"]
        shown = variants[key].map(_id_text)
        if (shown == variants["variant"].astype(str)).all():
            continue  # the variant name already says it (Table 4's schemes)
        cols.append(Column(key, HEADERS.get(key, key.split(".", 1)[-1]), "id"))
    return cols


CONFIG_COLUMNS = [
    Column("params_non_embedding", "non-emb params", "config"),
    Column("non_embedding_vs_vanilla_pct", "Δ non-emb", "config"),
    Column("flops_per_token", "FLOPs/token (palm)", "config"),
    Column("tokens", "tokens", "config"),
]


def _format(key: str, mean: float, std: float | None) -> str:
    if key.startswith("acc_"):
        mean, std, digits = 100 * mean, None if std is None else 100 * std, 2
    elif key.startswith("ppl_") or key == "perplexity":
        digits = 2
    else:
        digits = 4
    text = f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def _id_text(value: Any) -> str:
    if not _present(value):
        return "—"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _config_cell(key: str, value: Any, family: str) -> Cell:
    if not _present(value):
        return Cell("—")
    if key == "non_embedding_vs_vanilla_pct":
        return Cell("—" if family == "vanilla" else signed(value, 1, "%"), float(value))
    return Cell(human(float(value)), float(value))


def _result_cell(key: str, done: "pd.DataFrame", pending: str) -> Cell:
    values = done[key].dropna() if key in done else []
    if len(values) == 0:  # the state when nothing finished; finished but not evaluated is "—"
        return Cell(pending, pending=True) if pending and done.empty else Cell("—")
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    mark = SUBSET_MARK if _on_subset(key, done) else ""
    return Cell(_format(key, mean, std) + mark, mean, std, len(values))


def _on_subset(key: str, done: "pd.DataFrame") -> bool:
    """Whether any of these runs' evaluations behind an accuracy column covered only part of a task."""
    subset = "subset_" + key.removeprefix("acc_")
    return key.startswith("acc_") and subset in done and bool(done[subset].notna().any())


def group_table(group: str, runs: "pd.DataFrame", varying: list[str], results: list[Column]) -> GroupTable:
    ids = _id_columns(runs, varying)
    columns = [*ids, *CONFIG_COLUMNS, *results, Column("seeds", "seeds", "seeds")]
    rows: list[Row] = []
    unmatched: list[str] = []
    for _, cell_runs in runs.sort_values("position").groupby("cell", sort=False):
        first = cell_runs.iloc[0]
        done = cell_runs[cell_runs["state"] == "completed"]
        pending = state_text(cell_runs)
        row: dict[str, Cell] = {c.key: Cell(_id_text(first.get(c.key))) for c in ids}
        row.update({c.key: _config_cell(c.key, first.get(c.key), first["family"]) for c in CONFIG_COLUMNS})
        row.update({c.key: _result_cell(c.key, done, pending) for c in results})
        seeds = f"{len(done)}/{len(cell_runs)}"
        row["seeds"] = Cell(seeds + (f" ({pending})" if pending and len(done) else ""), float(len(done)))
        shape = _id_text(first.get("shape"))
        rows.append(Row(str(first["family"]), row, shape))
        if first["family"] != "vanilla" and not _present(first.get("non_embedding_vs_vanilla_pct")):
            unmatched.append(f"{row['variant'].text} {row['structure'].text} ({shape})")
    _deltas(rows, results)
    _mark_best(rows, results)
    from meshctl.analysis.comparisons import compare_group  # it formats with this module's `signed`

    return GroupTable(group, columns, rows, unmatched, compare_group(group, runs))


def _deltas(rows: list[Row], results: list[Column]) -> None:
    """`value / delta vs reference`: average accuracy in absolute points, as the paper; validation loss.
    A row's reference is the vanilla row of its shape; a row of no vanilla row's shape gets no delta."""
    references = {r.shape: r for r in rows if r.family == "vanilla"}
    for row in rows:
        vanilla = references.get(row.shape)
        if vanilla is None or row is vanilla:
            continue
        for col in results:
            accuracy = col.key.startswith("acc_") and col.key.endswith("shot_avg")
            reference, cell = vanilla[col.key].mean, row[col.key]
            if (accuracy or col.key == "val_loss") and reference is not None and cell.mean is not None:
                delta = 100 * (cell.mean - reference) if accuracy else cell.mean - reference
                cell.text += f" / {signed(delta, 2 if accuracy else 4)}"


def _mark_best(rows: list[Row], results: list[Column]) -> None:
    for col in results:
        values = [r[col.key].mean for r in rows if r[col.key].mean is not None]
        if len(values) < 2:
            continue
        best = min(values) if col.better == "min" else max(values)
        for row in rows:
            row[col.key].best = row[col.key].mean == best


def coverage(df: "pd.DataFrame") -> dict[str, Any]:
    states = df["state"].value_counts().to_dict() if len(df) else {}
    return {"runs": int(len(df)), "completed": int(states.get("completed", 0)),
            "states": {str(k): int(v) for k, v in sorted(states.items())}}


def coverage_line(cov: dict[str, Any]) -> str:
    if cov["runs"] and cov["completed"] == cov["runs"]:
        return f"All {cov['runs']} runs completed."
    others = ", ".join(f"{v} {k}" for k, v in cov["states"].items() if k != "completed")
    return f"{cov['completed']} of {cov['runs']} runs completed" + (f" ({others})." if others else ".")


def summarize(df: "pd.DataFrame") -> Summary:
    varying = varying_keys(df)
    results = _result_columns(df)
    tables = [group_table(str(g), runs, varying, results) for g, runs in df.groupby("group", sort=False)]
    sets = [c.key.removeprefix("ppl_") for c in results if c.key.startswith("ppl_")]
    return Summary(tables, varying, sets, coverage(df))

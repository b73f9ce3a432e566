"""Report plots (PNG, matplotlib Agg) from the tidy frame and the runs' metrics.jsonl.

- `loss_<group>.png`: training and validation loss vs tokens, one line per model of the scale (the
  mean over seeds, shaded between their min and max; an unfinished run is drawn as far as it got and
  its state is in the legend);
- `scaling.png`: the paper's Fig. 7 — non-embedding parameters vs validation loss, and vs average
  downstream accuracy where evaluations exist. One line across the scales per variant and loop count
  (e.g. `mesh R2 (−33%)`); vanilla black and dashed, MeSH red; points are the mean over completed seeds,
  error bars ±1 sample standard deviation over seeds (none for one seed), as the figure's caption says.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshctl.analysis.collect import fewshots
from meshctl.analysis.tables import MINUS, human

if TYPE_CHECKING:
    import pandas as pd

PALETTE = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink", "tab:gray")
MESH_PALETTE = ("tab:red", "tab:orange", "darkred", "salmon")


def _figure(ncols: int, width: float) -> tuple[Any, Any]:
    """A figure without pyplot: no global backend or figure registry is touched (safe in notebooks)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.2))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _colours(labels: list[tuple[str, bool, bool]]) -> dict[str, str]:
    """(label, is_vanilla, is_mesh) -> colour, stable in the given order."""
    out: dict[str, str] = {}
    plain = mesh = 0
    for label, vanilla, is_mesh in labels:
        if label in out:
            continue
        if vanilla:
            out[label] = "black"
        elif is_mesh:
            out[label] = MESH_PALETTE[mesh % len(MESH_PALETTE)]
            mesh += 1
        else:
            out[label] = PALETTE[plain % len(PALETTE)]
            plain += 1
    return out


def _is_mesh(run: Any) -> bool:
    return run.get("recurrence") == "mesh" or run.get("family") == "vanilla_mesh"


def _model_label(run: Any, show_structure: bool) -> str:
    label = str(run["variant"])
    return f"{label} {run['structure']}" if show_structure and run["family"] != "vanilla" else label


def loss_curves(df: "pd.DataFrame", group: str, path: Path) -> Path:
    from meshctl.train.rundir import read_metrics

    runs = df[df["group"] == group].sort_values("position")
    structures = runs.loc[runs["family"] != "vanilla", "structure"].nunique() > 1
    labels = [(_model_label(r, structures), r["family"] == "vanilla", _is_mesh(r)) for _, r in runs.iterrows()]
    colours = _colours(labels)
    eval_set = runs["eval_set"].dropna().iloc[0] if runs["eval_set"].notna().any() else None
    fig, (ax_train, ax_val) = _figure(2, 5.5)
    shown: dict[Any, list[tuple[int, float, float, float]]] = {ax_train: [], ax_val: []}
    for _, cell in runs.groupby("cell", sort=False):
        first = cell.iloc[0]
        label = _model_label(first, structures)
        records = [read_metrics(d) for d in cell["run_dir"]]
        n = sum(bool(r) for r in records)
        notes = [f"mean of {n} seeds" if n > 1 else f"{n} of {len(cell)} seeds"] if len(cell) > 1 else []
        notes += [f"{count} {state}" for state, count in cell["state"].value_counts().items() if state != "completed"]
        legend = label + (f" ({'; '.join(notes)})" if notes else "")
        train = _over_seeds([{r["tokens"]: r["train_loss"] for r in rs if r.get("train_loss") is not None}
                             for rs in records])
        val = _over_seeds([{r["tokens"]: v for r in rs if (v := _val_loss(r, eval_set)) is not None} for rs in records])
        for ax, series, marker in ((ax_train, train, None), (ax_val, val, "o")):
            if not series:
                continue
            xs, mean, low, high = zip(*series)
            ax.plot(xs, mean, color=colours[label], linewidth=1.5, marker=marker, markersize=3, label=legend)
            if n > 1:
                ax.fill_between(xs, low, high, color=colours[label], alpha=0.15, linewidth=0)
            shown[ax].extend(series[len(series) // 10:])  # past the first steps' loss of ~ln(vocab)
    ax_train.set_title(f"{group}: training loss")
    ax_val.set_title(f"{group}: validation loss" + (f" ({eval_set})" if eval_set else ""))
    for ax in (ax_train, ax_val):
        ax.set_xlabel("training tokens")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        _human_ticks(ax.xaxis)
        _zoom(ax, [y for point in shown[ax] for y in point[1:]])
    for ax in (ax_train, ax_val):
        if not ax.get_lines():
            ax.text(0.5, 0.5, "no metrics yet", transform=ax.transAxes, ha="center", color="gray")
    legend_ax = ax_val if ax_val.get_lines() else ax_train
    if legend_ax.get_lines():
        legend_ax.legend(fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _human_ticks(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda x, _: human(x) if x else "0"))


def _log_params_axis(ax: Any) -> None:
    """Log x with ticks at 1, 2, 5 x 10^k labelled 200K, 1.2B; a range narrower than two of those
    gets four evenly spaced ticks instead."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _human_ticks(ax.xaxis)
    low, high = ax.get_xlim()
    if sum(low <= t <= high for t in ax.xaxis.get_major_locator().tick_values(low, high)) < 2:
        ticks = [float(f"{t:.2g}") for t in np.geomspace(low, high, 6)[1:-1]]
        ax.xaxis.set_major_locator(FixedLocator(ticks))


def _over_seeds(series: list[dict[int, float]]) -> list[tuple[int, float, float, float]]:
    """(tokens, mean, min, max) over the seeds that reached each point."""
    out = []
    for tokens in sorted({t for s in series for t in s}):
        values = [s[tokens] for s in series if tokens in s]
        out.append((tokens, sum(values) / len(values), min(values), max(values)))
    return out


def _val_loss(record: dict[str, Any], eval_set: str | None) -> float | None:
    val = record.get("val") or {}
    entry = val.get(eval_set) if eval_set in val else next(iter(val.values()), None)
    return entry.get("loss") if isinstance(entry, dict) else None


def _zoom(ax: Any, ys: list[float]) -> None:
    """Limit y to the values shown past the first steps, so the differences between models are visible."""
    if len(ys) > 1:
        low, high = min(ys), max(ys)
        pad = 0.05 * (high - low or 1.0)
        ax.set_ylim(low - pad, high + pad)


def _line_label(run: Any, runs: "pd.DataFrame") -> str:
    """One line across scales per variant and loop count, e.g. `mesh R2 (−33%)`: the paper's 2+4R2+2 at
    160M and 4+8R2+4 at 1.4B are one line; the mean parameter change over its points is in the label."""
    if run["family"] == "vanilla":
        return "vanilla"
    loops = run.get("model.n_loop")
    same = runs[(runs["variant"] == run["variant"]) & (runs["family"] == run["family"])]
    if loops == loops and loops is not None:
        same = same[same["model.n_loop"] == loops]
    label = str(run["variant"]) + (f" R{int(loops)}" if run["family"] == "recursive" and loops == loops else "")
    pct = same["non_embedding_vs_vanilla_pct"].mean()
    return label if pct != pct else f"{label} ({f'{pct:+.0f}'.replace('-', MINUS)}%)"


ERROR_BARS = "points: mean over completed seeds; error bars: \u00b11 sample std over seeds (none for one seed)"


def _series(df: "pd.DataFrame", value: str) -> dict[str, list[tuple[float, float, float]]]:
    """line label -> [(non-emb params, mean, std)] over completed runs, one point per model; std is NaN
    for one seed (no bar drawn, rather than a zero-length one that reads as no variation)."""
    done = df[(df["state"] == "completed") & df[value].notna()] if value in df else df.iloc[0:0]
    out: dict[str, list[tuple[float, float, float]]] = {}
    for _, runs in done.groupby("cell", sort=False):
        std = float(runs[value].std(ddof=1)) if len(runs) > 1 else float("nan")
        point = (float(runs.iloc[0]["params_non_embedding"]), float(runs[value].mean()), std)
        out.setdefault(_line_label(runs.iloc[0], df), []).append(point)
    return {k: sorted(v) for k, v in out.items()}


def scaling(df: "pd.DataFrame", path: Path, sweep: str) -> Path:
    scaling_figure(df, sweep).savefig(path, dpi=120)
    return path


def scaling_figure(df: "pd.DataFrame", sweep: str) -> Any:
    """The Fig. 7 panels (an `ErrorbarContainer` per line), for `scaling` to save."""
    panels = [("val_loss", "validation loss (nats/token)", 1.0)]
    panels += [(f"acc_{k}shot_avg", f"{k}-shot average accuracy (%)", 100.0) for k in fewshots(df.columns)]
    fig, axes = _figure(len(panels), 5.5)
    ordered = df.sort_values("position")
    colours = _colours([(_line_label(r, ordered), r["family"] == "vanilla", _is_mesh(r))
                        for _, r in ordered.iterrows()])
    for ax, (value, ylabel, scale) in zip(axes, panels):
        for label, points in _series(ordered, value).items():
            xs, ys, errs = zip(*points)
            ax.errorbar(xs, [y * scale for y in ys], yerr=[e * scale for e in errs], color=colours[label],
                        marker="o", linewidth=1.6, capsize=3, label=label,
                        linestyle="--" if label == "vanilla" else "-")
        _log_params_axis(ax)
        ax.set_xlabel("non-embedding parameters (stored)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        if ax.get_lines():
            ax.legend(fontsize=9, frameon=False)
        else:
            ax.text(0.5, 0.5, "no completed runs yet", transform=ax.transAxes, ha="center", color="gray")
            ax.set_xticks([], minor=True)
            ax.set_xticks([])
    fig.suptitle(f"{sweep}: scaling (vanilla vs recursive vs MeSH)")
    fig.text(0.5, 0.01, ERROR_BARS, ha="center", va="bottom", fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def write_plots(df: "pd.DataFrame", out_dir: str | Path, sweep: str) -> list[Path]:
    """Every plot of the report into `out_dir` (created); returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [loss_curves(df, str(g), out / f"loss_{_safe(str(g))}.png") for g in df["group"].unique()]
    paths.append(scaling(df, out / "scaling.png", sweep))
    from meshctl.analysis.depth import write_depth_plots

    paths += write_depth_plots(df, out)  # depth_<group>.png where runs were evaluated at other depths
    return paths


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)

"""The report's paired comparisons: each variant of a scale against its `base` and its `vanilla`, seed by seed.

Within a group (scale), a model's runs are paired with the reference's runs of the same seed
(`meshctl.analysis.paired`). References: the vanilla model of the variant's shape (as the table's
deltas), and the recursive `base` model of its shape (of its structure when several). Compared: the
validation loss (lower is better) and each few-shot average accuracy (higher is better).

A verdict is one line a newcomer can read, e.g.
`mesh vs base (val loss, lower is better): −0.096 ± 0.027 nats (95% CI −0.163 to −0.029), lower on 3/3
seeds, CI excludes 0 (mesh lower)`; ± is the standard deviation of the per-seed differences. With one
pair it says there is no paired estimate; models planned on different seeds are called unpaired and
compared on the seeds they share, named; pairs not completed yet are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshctl.analysis.collect import fewshots
from meshctl.analysis.paired import CI_LEVEL, Pairing, pair

if TYPE_CHECKING:
    import pandas as pd

REFERENCES = ("base", "vanilla")
# per-cell statistics repeated on each run of the variant in the tidy frame (CSV), beside its own difference
STAT_COLUMNS = ("mean", "sd", "ci_low", "ci_high", "n", "wins", "verdict")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # "lower" | "higher"
    unit: str
    scale: float  # frame units -> the verdict's units (accuracy fractions -> points)
    digits: int


def metrics(columns: Any) -> list[Metric]:
    out = [Metric("val_loss", "val loss", "lower", "nats", 1.0, 3)]
    out += [Metric(f"acc_{k}shot_avg", f"{k}-shot avg accuracy", "higher", "points", 100.0, 2) for k in fewshots(columns)]
    return out


@dataclass
class Comparison:
    group: str
    metric: Metric
    variant: str  # names as in the table: the variant label, with its structure where the label repeats
    reference: str  # "base" or "vanilla"
    reference_variant: str
    cell: str
    reference_cell: str
    pairing: Pairing

    @property
    def column(self) -> str:
        """The tidy frame's column of this comparison's per-seed differences: `paired_val_loss_vs_base`."""
        return f"paired_{self.metric.key}_vs_{self.reference}"

    @property
    def verdict(self) -> str:
        return verdict(self)


def _seeds(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds) or "none"


def _num(value: float, metric: Metric, sign: bool = True) -> str:
    from meshctl.analysis.tables import signed

    value *= metric.scale
    return signed(value, metric.digits) if sign else f"{abs(value):.{metric.digits}f}"


def verdict(c: Comparison) -> str:
    p, m = c.pairing, c.metric
    head = f"{c.variant} vs {c.reference_variant} ({m.label}, {m.better} is better): "
    if not p.paired:
        head += (f"unpaired ({c.variant} seeds {_seeds(p.variant_seeds)}; {c.reference_variant} seeds "
                 f"{_seeds(p.reference_seeds)}), " + (f"compared on the shared seeds {_seeds(p.shared)} only: "
                                                      if p.shared else "no shared seeds to compare"))
        if not p.shared:
            return head
    if p.n == 0:
        return head + f"no completed pair yet (seed {_seeds(p.pending)} not completed)"
    elif p.n == 1:
        body = (f"n=1 (seed {p.seeds[0]}): {_num(p.mean, m)} {m.unit}, no paired estimate "  # type: ignore[arg-type]
                "(one pair has no spread; needs 2+ seeds)")
    else:
        side = "lower" if (p.mean or 0) < 0 else "higher"
        excluded = f"CI excludes 0 ({c.variant} {side})" if p.excludes_zero else "CI includes 0 (no clear difference)"
        body = (f"{_num(p.mean, m)} ± {_num(p.sd, m, sign=False)} {m.unit} "  # type: ignore[arg-type]
                f"({CI_LEVEL:.0%} CI {_num(p.ci_low, m)} to {_num(p.ci_high, m)}), "  # type: ignore[arg-type]
                f"{m.better} on {p.wins}/{p.n} seeds, {excluded}")
    if p.pending:
        body += f"; {p.n} of {len(p.shared)} pairs completed (seed {_seeds(p.pending)} not completed)"
    return head + body


def _by_seed(runs: "pd.DataFrame", key: str) -> dict[int, float | None]:
    """Every planned seed of a model, with its value once the run completed."""
    out: dict[int, float | None] = {}
    for _, run in runs.iterrows():
        value = run.get(key) if run["state"] == "completed" else None
        out[int(run["seed"])] = None if value is None or value != value else float(value)
    return out


def _any(values: dict[int, float | None]) -> bool:
    return any(v is not None for v in values.values())


def _is_base(run: Any) -> bool:
    return run["family"] == "recursive" and run.get("recurrence") == "base"


def _reference(kind: str, first: Any, cells: list[tuple[str, Any]]) -> tuple[str, Any] | None:
    """The cell a model is compared with: of its shape; for base, of its structure when several."""
    if kind == "vanilla":
        found = [c for c in cells if c[1]["family"] == "vanilla" and c[1]["shape"] == first["shape"]]
    else:
        found = [c for c in cells if _is_base(c[1]) and c[1]["shape"] == first["shape"]]
        found = [c for c in found if c[1]["structure"] == first["structure"]] or found
        if len(found) > 1:  # several bases of this shape and none of this structure: ambiguous, none
            return None
    return found[0] if found else None


def compare_group(group: str, runs: "pd.DataFrame") -> list[Comparison]:
    """Every variant of one scale against base and vanilla, on every metric present, in table order."""
    ordered = runs.sort_values("position")
    cells = [(str(cell), rows) for cell, rows in ordered.groupby("cell", sort=False)]
    firsts = [(cell, rows.iloc[0]) for cell, rows in cells]
    labels = [str(f["variant"]) for _, f in firsts]
    names = {cell: str(f["variant"]) + (f" {f['structure']}" if labels.count(str(f["variant"])) > 1 else "")
             for cell, f in firsts}
    frames = dict(cells)
    out = []
    for metric in metrics(runs.columns):
        if metric.key not in runs:
            continue
        for cell, first in firsts:
            if first["family"] == "vanilla":
                continue
            for kind in REFERENCES:
                ref = None if kind == "base" and _is_base(first) else _reference(kind, first, firsts)
                if ref is None:
                    continue
                mine, theirs = _by_seed(frames[cell], metric.key), _by_seed(frames[ref[0]], metric.key)
                if metric.key != "val_loss" and not (_any(mine) and _any(theirs)):
                    continue  # an accuracy one side was never evaluated on: nothing to wait for
                pairing = pair(mine, theirs, metric.better)  # type: ignore[arg-type]
                out.append(Comparison(group, metric, names[cell], kind, names[ref[0]], cell, ref[0], pairing))
    return out


def record(c: Comparison) -> dict[str, Any]:
    """One comparison for the report's JSON (`paired`): values in the metric's frame units."""
    p = c.pairing
    return {
        "group": c.group, "metric": c.metric.key, "better": c.metric.better, "variant": c.variant,
        "reference": c.reference, "reference_variant": c.reference_variant,
        "paired": p.paired, "variant_seeds": p.variant_seeds, "reference_seeds": p.reference_seeds,
        "seeds": p.seeds, "pending_seeds": p.pending, "differences": p.differences,
        "n": p.n, "mean": p.mean, "sd": p.sd, "ci_level": CI_LEVEL, "ci_low": p.ci_low, "ci_high": p.ci_high,
        "wins": p.wins, "excludes_zero": p.excludes_zero, "verdict": c.verdict,
    }


def with_columns(frame: "pd.DataFrame", comparisons: list[Comparison]) -> "pd.DataFrame":
    """The tidy frame with `paired_<metric>_vs_<ref>` (this run minus the reference's run of its seed) and
    the variant's statistics `paired_<metric>_vs_<ref>_{mean,sd,ci_low,ci_high,n,wins,verdict}`."""
    import pandas as pd

    from meshctl.analysis.collect import normalize

    if not comparisons:
        return frame
    new: dict[str, list[Any]] = {}
    for c in comparisons:
        for name in (c.column, *(f"{c.column}_{s}" for s in STAT_COLUMNS)):
            new.setdefault(name, [None] * len(frame))
    positions = {label: i for i, label in enumerate(frame.index)}
    for c in comparisons:
        p, stats = c.pairing, record(c)
        diffs = dict(zip(p.seeds, p.differences))
        mine = frame[(frame["group"] == c.group) & (frame["cell"] == c.cell)]
        for label, seed in mine["seed"].items():
            i = positions[label]
            new[c.column][i] = diffs.get(int(seed))
            for s in STAT_COLUMNS:
                new[f"{c.column}_{s}"][i] = stats[s]
    return pd.concat([frame, normalize(pd.DataFrame(new, index=frame.index))], axis=1)

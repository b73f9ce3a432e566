"""The paper's probes side by side: two recurrences of a sweep (default base against mesh) per scale.

For each (group, structure) of the sweep holding both recurrences, one seed is compared: seed 0 when both
have it, else the lowest seed they share. Each run is probed as `meshctl probe RUN` would (its
probe.json is reused when it was made with the same settings from the current checkpoint), then
Figs. 3-5 are drawn with both models in one figure each, into `out_dir`:

    <group>[_<structure>]_seed<k>_<a>_vs_<b>_{update_magnitude,cka,spectrum}.png
    probe_compare.json   schema "meshctl.probe_compare/1": sweep, compare [a, b], settings, untrained
                         (pairs skipped: a run without a checkpoint yet), and per pair {group, structure,
                         seed, figures, models {a: {...}, b: {...}}} with each model's run_id,
                         checkpoint_step, stages, update_magnitude, states, cka (mean), spectrum (mean)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meshctl.errors import BadInput

SCHEMA = "meshctl.probe_compare/1"


@dataclass(frozen=True)
class Pair:
    group: str
    structure: str
    seed: int
    runs: tuple[Path, Path]  # in the order of `compare`
    prefix: str  # figure file names start with it


def sweep_rows(sweep: str, results_dir: str | Path) -> list[Any]:
    """The sweep's ledger rows (run dir and labels), in sweep order."""
    from meshctl.layout import ledger_path
    from meshctl.orchestrate.ledger import Ledger

    path = ledger_path(results_dir)
    if not path.is_file():
        raise BadInput(f"{sweep!r} is neither a run (path, id or id prefix) nor a sweep: no ledger at {path}")
    with Ledger(path) as ledger:
        if sweep not in ledger.sweeps():
            raise BadInput(f"{sweep!r} is neither a run (path, id or id prefix) nor a sweep in {path}")
        return ledger.runs(sweep)


def find_pairs(sweep: str, rows: list[Any], compare: tuple[str, str]) -> list[Pair]:
    """One pair per (group, structure) that has both recurrences at a shared seed; BadInput naming what the
    sweep has when there is none. Vanilla runs never count: their spec carries a default recurrence too."""
    cells: dict[tuple[str, str], dict[str, dict[int, Path]]] = {}
    for row in rows:
        labels = row.labels
        if labels.get("family") == "vanilla":
            continue
        key = (str(labels.get("group")), str(labels.get("structure")))
        seeds = cells.setdefault(key, {}).setdefault(str(labels.get("recurrence")), {})
        seeds.setdefault(int(labels.get("seed", 0)), Path(row.run_dir))  # the first of repeated variants (slots)
    structures: dict[str, int] = {}
    for group, _ in cells:
        structures[group] = structures.get(group, 0) + 1
    pairs = []
    for (group, structure), by_rec in cells.items():
        a, b = (by_rec.get(r, {}) for r in compare)
        shared = sorted(set(a) & set(b))
        if not shared:
            continue
        seed = shared[0]  # seed 0 when both have it (seeds are >= 0)
        name = group if structures[group] == 1 else f"{group}_{structure}"
        prefix = f"{_slug(name)}_seed{seed}_{compare[0]}_vs_{compare[1]}_"
        pairs.append(Pair(group, structure, seed, (a[seed], b[seed]), prefix))
    if not pairs:
        have = "; ".join(f"{group} {structure}: {', '.join(sorted(by_rec))}" for (group, structure), by_rec in cells.items())
        raise BadInput(f"sweep {sweep!r} has no {compare[0]}/{compare[1]} pair (same seed) at any scale; it has "
                       f"{have or 'no recursive runs'}; name two of those with --compare A,B")
    return pairs


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in text)  # "+" is awkward in file names


def parse_compare(text: str) -> tuple[str, str]:
    names = tuple(n.strip() for n in text.split(","))
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise BadInput(f"--compare {text!r}: give two different recurrences, e.g. base,mesh")
    return names  # type: ignore[return-value]


def _numbers(doc: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": doc["run_id"], "checkpoint_step": doc["checkpoint_step"], "stages": doc["stages"],
            "update_magnitude": doc["update_magnitude"], "states": doc["states"], "cka": doc["cka"]["mean"],
            "spectrum": {s: v["mean"] for s, v in doc["spectrum"].items()}}


def probe_sweep(sweep: str, results_dir: str | Path, out_dir: str | Path | None = None,
                compare: tuple[str, str] = ("base", "mesh"), samples: int = 500, n_loop: int | None = None,
                seq_len: int | None = None, split: str = "validation", batch_size: int = 8,
                device: str = "cpu") -> dict[str, Any]:
    """Probe each pair's two runs (or reuse their probe.json) and write the comparison figures and
    probe_compare.json into out_dir (default <results>/plots/<sweep>/probe). Returns the summary."""
    from meshctl.analysis.probe import cached_probe, probe_run
    from meshctl.analysis.probe_plots import write_figures
    from meshctl.train.rundir import write_json_atomic

    pairs = find_pairs(sweep, sweep_rows(sweep, results_dir), compare)
    untrained = [p for p in pairs if not all((r / "checkpoints" / "last.ckpt").is_file() for r in p.runs)]
    if len(untrained) == len(pairs):
        raise BadInput(f"sweep {sweep!r}: no {compare[0]}/{compare[1]} pair has both checkpoints yet; "
                       f"train it first (`meshctl sweep ... --wait`)")
    pairs = [p for p in pairs if p not in untrained]
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "plots" / sweep / "probe"
    settings = {"samples": samples, "n_loop": n_loop, "seq_len": seq_len, "split": split}
    summary: dict[str, Any] = {"schema": SCHEMA, "sweep": sweep, "compare": list(compare), "settings": settings,
                               "pairs": [], "untrained": [f"{p.group} {p.structure} seed {p.seed}" for p in untrained]}
    for pair in pairs:
        docs = []
        for run_dir in pair.runs:
            doc = cached_probe(run_dir, **settings)
            # Figures of the comparison only: per-run PNGs would double the plotting time of a sweep.
            docs.append(doc if doc is not None else probe_run(run_dir, device=device, batch_size=batch_size,
                                                              plots=False, **settings))
        title = f"{pair.group} {pair.structure}, seed {pair.seed}"
        figures = write_figures(list(zip(compare, docs)), out, prefix=pair.prefix, title=title)
        summary["pairs"].append({"group": pair.group, "structure": pair.structure, "seed": pair.seed,
                                 "figures": [p.name for p in figures],
                                 "models": {name: _numbers(doc) for name, doc in zip(compare, docs)}})
    summary["out_dir"] = str(out)
    summary["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(out / "probe_compare.json", summary)
    return summary

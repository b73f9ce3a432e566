"""`meshctl probe RUN|SWEEP`: the MeSH paper's hidden-state probes (update magnitude, CKA, spectra).

RUN writes <run>/probe/; SWEEP draws two recurrences (default base, mesh) side by side per scale into --out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.common import Format, FormatOpt, ResultsDir, print_json, print_table, user_errors
from meshctl.cli.eval import DeviceOpt, LoopsOpt, pick_device

TargetArg = Annotated[str, typer.Argument(metavar="RUN|SWEEP", help="Run id, unique id prefix, run directory, or sweep.")]


def probe(
    run: TargetArg,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Held-out windows probed (paper: 500).")] = 500,
    loops: LoopsOpt = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", min=2, help="Tokens per window; default: the run's.")] = None,
    split: Annotated[str, typer.Option("--split", help="Split of the run's prepared data.")] = "validation",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Windows per forward pass.")] = 8,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="RUN: write probe.json only.")] = False,
    compare: Annotated[str, typer.Option("--compare", help="SWEEP: the two recurrences drawn side by side.")] = "base,mesh",
    out: Annotated[Path | None, typer.Option("--out", help="SWEEP: figure directory; default <results>/plots/<sweep>/probe.")] = None,
    device: DeviceOpt = "auto",
    results_dir: ResultsDir = Path("results"),
    format: FormatOpt = Format.table,
) -> None:
    """Relative update magnitude per stage, RBF-CKA between stage states, singular-value spectra.

    A sweep: per scale, two recurrences' runs (seed 0, else the first seed both have) in one figure each."""
    with user_errors():
        from meshctl.analysis.loading import resolve_run
        from meshctl.analysis.probe import probe_run
        from meshctl.errors import BadInput

        try:
            run_dir = resolve_run(run, results_dir)
        except BadInput:  # not a run: a sweep, or an error naming both
            from meshctl.analysis.probe_compare import parse_compare, probe_sweep

            summary = probe_sweep(run, results_dir, out, parse_compare(compare), samples=samples, n_loop=loops,
                                  seq_len=seq_len, split=split, batch_size=batch_size, device=pick_device(device))
            _print_comparison(summary, format)
            return
        doc = probe_run(run_dir, samples=samples, n_loop=loops, seq_len=seq_len, split=split, batch_size=batch_size,
                        device=pick_device(device), plots=not no_plots)
    if format == Format.json:
        print_json(doc)
        return
    title = f"probe {doc['run_id']}: {doc['structure']} {doc['recurrence'] or ''}, {doc['data']['samples']} samples"
    um = doc["update_magnitude"]
    stage_rows = [{"stage": s, "update": um[s]["mean"], "std": um[s]["std"]} for s in doc["stages"]]
    print_table(stage_rows, [("stage", "stage"), ("update", "update magnitude"), ("std", "std")], title=title)
    states, cka = doc["states"], doc["cka"]["mean"]
    state_rows = []
    for i, state in enumerate(states):
        spectrum = doc["spectrum"][state]["mean"]
        state_rows.append({"state": state, "cka_prev": cka[i][i - 1] if i else None, "cka_emb": cka[i][0],
                           "sigma10": spectrum[10] if len(spectrum) > 10 else None})
    print_table(state_rows, [("state", "state"), ("cka_prev", "CKA vs previous"), ("cka_emb", "CKA vs h_emb"),
                             ("sigma10", "sigma_10 / sigma_0")])
    typer.echo(f"probe.json and figures in {run_dir / 'probe'}")


def _print_comparison(summary: dict, format: Format) -> None:
    if summary["untrained"]:
        typer.echo(f"note: not trained yet, skipped: {'; '.join(summary['untrained'])}", err=True)
    if format == Format.json:
        print_json(summary)
        return
    a, b = summary["compare"]
    for pair in summary["pairs"]:
        models = pair["models"]
        title = f"{pair['group']} {pair['structure']} seed {pair['seed']}: {a} vs {b}"
        rows = [{"stage": s, a: models[a]["update_magnitude"].get(s, {}).get("mean"),
                 b: models[b]["update_magnitude"].get(s, {}).get("mean")} for s in models[a]["stages"]]
        print_table(rows, [("stage", "stage"), (a, f"update {a}"), (b, f"update {b}")], title=title)
        rows = []
        for i, state in enumerate(models[a]["states"]):
            row = {"state": state}
            for name in (a, b):
                row[name] = models[name]["cka"][i][i - 1] if i else None
            rows.append(row)
        print_table(rows, [("state", "state"), (a, f"CKA vs previous {a}"), (b, f"CKA vs previous {b}")])
    typer.echo(f"figures and probe_compare.json in {summary['out_dir']}")

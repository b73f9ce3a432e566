"""`meshctl train RUN.yaml`: train one run in its run directory (resuming it if it has a checkpoint)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.common import Format, FormatOpt, ResultsDir, fail, print_json, print_table, user_errors
from meshctl.errors import MeshctlError


def train(
    spec: Annotated[Path, typer.Argument(help="Run spec (YAML or JSON): model, data, train, seed.")],
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run directory (default: <results>/runs/<name or spec hash>).")
    ] = None,
    results_dir: ResultsDir = Path("results"),
    format: FormatOpt = Format.table,
) -> None:
    """Train one model on prepared data; an interrupted run resumes from checkpoints/last.ckpt."""
    with user_errors():
        from meshctl.specs.run import load_run_spec
        from meshctl.train.job import prepare_run

        resolved = load_run_spec(spec).resolved()
        run_dir = run_dir or results_dir / "runs" / (resolved.name or resolved.short_hash())
        prepare_run(resolved, run_dir)
    if format == Format.table:
        sys.stderr.write(f"run dir: {run_dir}\n")
    from meshctl.train.job import run_training

    try:
        final = run_training(resolved, run_dir)
    except MeshctlError as exc:
        fail(str(exc), exc.exit_code)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:  # DDP launches this command once per device; one of them reports
        return
    if format == Format.json:
        print_json({"run_dir": str(run_dir), "final": final})
        return
    rows = [
        {"metric": "step", "value": final["step"]},
        {"metric": "tokens", "value": final["tokens"]},
        {"metric": "train loss", "value": final.get("train_loss")},
        *({"metric": f"val loss ({name})", "value": v["loss"]} for name, v in final["val"].items()),
        *({"metric": f"perplexity ({name})", "value": v["perplexity"]} for name, v in final["val"].items()),
        {"metric": "tokens/s (median)", "value": final.get("tokens_per_s")},
        {"metric": "MFU (median)", "value": final.get("mfu")},
    ]
    print_table(rows, [("metric", "metric"), ("value", "value")], title=f"{run_dir}")

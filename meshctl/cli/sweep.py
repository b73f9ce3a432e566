"""`meshctl sweep`, `meshctl status`, `meshctl cancel`, `meshctl resubmit`: thin commands over orchestrate/."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from meshctl.cli.common import Format, FormatOpt, ResultsDir, console, print_json, print_table, user_errors
from meshctl.executor_kinds import EXECUTOR_KINDS

DEFAULT_RESULTS = Path("results")
# the executors' names as a CLI choice (meshctl/executor_kinds.py is their one list)
ExecutorKind = Enum("ExecutorKind", {kind: kind for kind in EXECUTOR_KINDS}, type=str)


PLAN_COLUMNS = [
    ("run_id", "run"), ("group", "scale"), ("variant", "variant"), ("structure", "structure"), ("seed", "seed"),
    ("params_non_embedding", "non-emb"), ("params_unrolled_non_embedding", "unrolled"),
    ("flops_per_token", "FLOPs/tok (palm)"), ("tokens", "tokens"), ("total_flops", "FLOPs"),
    ("gpus", "GPUs"), ("strategy", "strategy"), ("gpu_memory_gib", "GiB/GPU"), ("gpu_hours", "GPU-h"),
]
STATUS_COLUMNS = [
    ("run_id", "run"), ("group", "scale"), ("variant", "variant"), ("structure", "structure"), ("seed", "seed"),
    ("state", "state"), ("progress", "step"), ("tokens", "tokens"), ("train_loss", "train"), ("val_loss", "val"),
    ("tokens_per_s", "tok/s"), ("eta", "ETA"), ("detail", "detail"),
]
EVALS_COLUMN = ("evals", "evals")  # shown when the sweep has an evaluation plan


def _columns(statuses: list[Any]) -> list[tuple[str, str]]:
    if not any(s.evals is not None for s in statuses):
        return STATUS_COLUMNS
    return [*STATUS_COLUMNS[:-1], EVALS_COLUMN, STATUS_COLUMNS[-1]]


def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (YAML), e.g. sweeps/pythia_scale.yaml.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only: runs, parameters, FLOPs, GPU-hours.")] = False,
    executor: Annotated[ExecutorKind | None, typer.Option(help="Override the spec's executor.")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also resubmit failed and cancelled runs.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Resubmit everything not in flight (completed runs' dirs are moved aside).")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Block with a live progress display until every run ends.")] = False,
    gpu: Annotated[str, typer.Option(help="Chip for GPU-hour estimates (h100-sxm, h200-sxm, a100, ...).")] = "h100-sxm",
    mfu: Annotated[float, typer.Option(help="Assumed model FLOP utilisation for GPU-hour estimates.")] = 0.4,
    format: FormatOpt = Format.table,
    results_dir: ResultsDir = DEFAULT_RESULTS,
) -> None:
    """Expand a sweep spec into runs and submit the ones not done or in flight (idempotent)."""
    from meshctl.orchestrate.plan import plan_rows, totals
    from meshctl.specs.sweep import expand, load_sweep

    with user_errors():
        parsed, raw = load_sweep(spec)
        if dry_run:
            rows = plan_rows(expand(parsed, str(spec)), gpu=gpu, mfu=mfu)
            summary = {**totals(rows), "gpu": gpu, "mfu": mfu, "flop_formula": "palm"}
            if format == Format.json:
                print_json({"sweep": parsed.name, "runs": rows, "totals": summary})
            else:
                print_table(rows, PLAN_COLUMNS, title=f"{parsed.name}: plan ({gpu}, MFU {mfu:.0%})")
                typer.echo(_totals_line(summary))
            return
        from meshctl.orchestrate.submit import submit_sweep

        kind, evaluation = executor.value if executor else None, _checked_evaluation(parsed)
        report = submit_sweep(parsed, raw, str(spec), results_dir, executor=kind,
                              retry_failed=retry_failed, force=force, evaluation=evaluation)
    if format == Format.json and not wait:
        print_json({"sweep": parsed.name, "submitted": report.job_ids, "skipped": report.skipped})
    else:  # with --format json --wait, stdout is kept for the final status document
        typer.echo(f"{parsed.name}: submitted {len(report.submitted)} run(s), left {len(report.skipped)} alone "
                   f"({_count_states(report.skipped)}); results in {results_dir}", err=format == Format.json)
    if report.adopted:
        typer.echo(f"{parsed.name}: adopted {len(report.adopted)} run(s) whose jobs a killed meshctl had submitted "
                   "without recording them", err=True)
    if wait:
        _wait(parsed.name, results_dir, format, command=f"meshctl sweep {spec}", takeover=lambda: submit_sweep(
            parsed, raw, str(spec), results_dir, executor=kind, evaluation=evaluation))


def _checked_evaluation(parsed: Any) -> dict[str, Any] | None:
    """The sweep's evaluation plan with its tasks expanded, refused (exit 2) before anything is submitted
    when it could only fail after every run has trained: lm-eval missing, or a task name it does not know."""
    if parsed.eval is None:
        return None
    from meshctl.analysis.evaluation import check_task_names, expand_tasks, require_lm_eval
    from meshctl.errors import BadInput, MeshctlError

    try:
        require_lm_eval()
    except MeshctlError as exc:
        raise BadInput(f"eval: {exc}") from None
    tasks = expand_tasks(parsed.eval.tasks)
    check_task_names(tasks, where="eval.tasks")
    return {**parsed.eval.model_dump(), "tasks": tasks, "expanded": True}


def status(
    sweep_name: Annotated[str | None, typer.Argument(metavar="[SWEEP]", help="Sweep name (default: all runs).")] = None,
    format: FormatOpt = Format.table,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every few seconds until interrupted.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 5.0,
    results_dir: ResultsDir = DEFAULT_RESULTS,
) -> None:
    """Where every run stands: state, step/total, tokens, losses, tokens/s, ETA; counts per state."""
    with user_errors():
        statuses = _observe(sweep_name, results_dir)
    if format == Format.json:
        print_json(_status_document(sweep_name, statuses))
        return
    if not watch:
        _print_status(sweep_name, statuses)
        return
    from rich.live import Live

    with Live(_status_renderable(sweep_name, statuses), refresh_per_second=1, console=console()) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(_status_renderable(sweep_name, _observe(sweep_name, results_dir)))
        except KeyboardInterrupt:
            pass


def cancel(
    target: Annotated[str, typer.Argument(metavar="SWEEP|RUN", help="A sweep name, or a run id (prefix).")],
    results_dir: ResultsDir = DEFAULT_RESULTS,
) -> None:
    """Cancel the in-flight jobs of a sweep or one run (one scancel / one signal per local job)."""
    from meshctl.orchestrate.control import cancel_runs

    with user_errors():
        cancelled = cancel_runs(target, results_dir)
    typer.echo(f"cancelled {len(cancelled)} run(s)" + (f": {', '.join(cancelled)}" if cancelled else ""))


def resubmit(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    executor: Annotated[ExecutorKind | None, typer.Option(help="Executor (default: the run's last one).")] = None,
    results_dir: ResultsDir = DEFAULT_RESULTS,
) -> None:
    """Submit one run again (failed, cancelled or incomplete); it resumes from its checkpoint."""
    from meshctl.orchestrate.control import resubmit_run

    with user_errors():
        job_id = resubmit_run(run, results_dir, executor.value if executor else None)
    typer.echo(f"resubmitted {run} as job {job_id}")


def _observe(sweep_name: str | None, results_dir: Path) -> list[Any]:
    from meshctl.errors import BadInput
    from meshctl.layout import require_ledger
    from meshctl.orchestrate.ledger import Ledger
    from meshctl.orchestrate.status import observe

    path = require_ledger(results_dir)
    with Ledger(path) as ledger:
        if sweep_name is not None and ledger.sweep_spec(sweep_name) is None:
            known = ", ".join(ledger.sweeps()) or "none yet"
            raise BadInput(f"SWEEP: no sweep named {sweep_name!r} in {path} (known: {known})")
        return observe(ledger, sweep_name)


def _status_document(sweep_name: str | None, statuses: list[Any]) -> dict[str, Any]:
    from meshctl.orchestrate.status import counts

    return {"sweep": sweep_name, "counts": counts(statuses), "runs": [s.as_dict() for s in statuses]}


def _rows(statuses: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for s in statuses:
        row = {**s.labels, **s.as_dict()}
        row["progress"] = f"{s.step or 0}/{s.total_steps}" if s.total_steps else None
        row["eta"] = _duration(s.eta_s) if s.eta_s is not None else None
        rows.append(row)
    return rows


def _status_renderable(sweep_name: str | None, statuses: list[Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from meshctl.cli.common import format_cell
    from meshctl.orchestrate.status import counts

    table = Table(title=f"{sweep_name or 'all runs'}", header_style="bold")
    columns = _columns(statuses)
    for _, header in columns:
        table.add_column(header)
    for row in _rows(statuses):
        table.add_row(*(format_cell(row.get(k)) for k, _ in columns))
    line = "  ".join(f"{k}: {v}" for k, v in counts(statuses).items())
    return Group(table, Text(line))


def _print_status(sweep_name: str | None, statuses: list[Any]) -> None:
    from meshctl.orchestrate.status import counts

    print_table(_rows(statuses), _columns(statuses), title=sweep_name or "all runs")
    typer.echo("  ".join(f"{k}: {v}" for k, v in counts(statuses).items()) or "no runs")
    for s in statuses:
        if (s.state == "failed" or s.evals == "failed") and s.log_tail:
            typer.echo(f"{s.run_id} ({s.detail}):")
            for line in s.log_tail:
                typer.echo(f"    {line}")


def _wait(sweep_name: str, results_dir: Path, format: Format, takeover: Any = None, command: str = "") -> None:
    """A live table in a terminal; in a log (CI, nohup) one progress line every 30 s, then the table.
    Waits for the sweep's evaluations too, where it has an evaluation plan. Never on nobody: runs left
    without a job or a live claim (their claimer died) are taken over with `takeover()`, up to
    TAKEOVERS times; what is still stranded then is named with the command to run, exit 1."""
    from rich.live import Live

    out = console(stderr=format == Format.json)
    statuses = _observe(sweep_name, results_dir)
    takeovers = 0

    def refresh() -> list[Any]:
        nonlocal takeovers
        current = _observe(sweep_name, results_dir)
        if _stranded(current) and takeover is not None and takeovers < TAKEOVERS:
            takeovers += 1
            takeover()
            current = _observe(sweep_name, results_dir)
        return current

    if out.is_terminal:
        with Live(_status_renderable(sweep_name, statuses), refresh_per_second=1, console=out) as live:
            while _in_flight(statuses):
                time.sleep(3)
                statuses = refresh()
                live.update(_status_renderable(sweep_name, statuses))
    else:
        last = 0.0
        while _in_flight(statuses):
            if time.monotonic() - last >= 30:
                out.print(f"{time.strftime('%H:%M:%S')} {sweep_name}: {_progress_line(statuses)}")
                last = time.monotonic()
            time.sleep(3)
            statuses = refresh()
        out.print(_status_renderable(sweep_name, statuses))
    if format == Format.json:
        print_json(_status_document(sweep_name, statuses))
    stranded = _stranded(statuses, ("new", "incomplete"))
    if stranded:
        typer.echo(f"{sweep_name}: {len(stranded)} run(s) can make no progress without a new submission "
                   f"({', '.join(f'{s.run_id} {s.state}' for s in stranded[:6])}{', ...' if len(stranded) > 6 else ''}); "
                   f"run `{command or 'meshctl sweep SPEC'}` to submit them", err=True)
    if any(s.state != "completed" or s.evals == "failed" for s in statuses):
        raise typer.Exit(1)


TAKEOVERS = 3  # stranded-run takeovers one --wait makes before it names them and exits 1


def _stranded(statuses: list[Any], states: tuple[str, ...] = ("new",)) -> list[Any]:
    """Runs nobody will move: no job and no live claim (`new`: their claimer died), or with `incomplete`
    too, a job gone without final.json."""
    return [s for s in statuses if s.state in states]


def _in_flight(statuses: list[Any]) -> bool:
    from meshctl.orchestrate.status import ACTIVE

    return any(s.state in ACTIVE or s.evaluating for s in statuses)


def _progress_line(statuses: list[Any]) -> str:
    from meshctl.orchestrate.status import counts

    done = sum((s.step or 0) for s in statuses)
    total = sum((s.total_steps or 0) for s in statuses)
    states = ", ".join(f"{v} {k}" for k, v in counts(statuses).items())
    evaluating = sum(s.evaluating for s in statuses)
    return f"{states}; steps {done}/{total} ({100 * done / max(total, 1):.0f}%)" + (
        f"; {evaluating} evaluating" if evaluating else "")


def _count_states(states: dict[str, str]) -> str:
    out: dict[str, int] = {}
    for state in states.values():
        out[state] = out.get(state, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(out.items())) or "none"


def _totals_line(summary: dict[str, Any]) -> str:
    from meshctl.cli.common import human

    hours = summary["gpu_hours"]
    hours_text = f"{hours:,.0f}" if hours >= 10 else f"{hours:.3g}"
    return (f"total: {summary['runs']} runs, {human(summary['tokens'])} tokens, {human(summary['total_flops'])}FLOPs, "
            f"{hours_text} GPU-hours on {summary['gpu']} at MFU {summary['mfu']:.0%}")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"

"""`meshctl eval RUN|SWEEP` (lm-eval downstream tasks, results in <run>/eval/) and `meshctl sample RUN`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from meshctl.cli.common import Format, FormatOpt, ResultsDir, print_json, print_table, user_errors

RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique id prefix, or run directory.")]
LoopsOpt = Annotated[
    int | None, typer.Option("--loops", help="Core iterations at test time (recursive models); default: as trained.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1 ...; auto picks cuda when available.")]

EVAL_COLUMNS = [("run_id", "run"), ("task", "task"), ("primary_metric", "metric"), ("primary", "value"),
                ("n", "docs"), ("n_loop", "loops"), ("num_fewshot", "shots"), ("path", "file")]


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def eval_(
    target: Annotated[str, typer.Argument(metavar="RUN|SWEEP", help="Run id, id prefix, run directory, or sweep name.")],
    tasks: Annotated[
        list[str] | None,
        typer.Option("--tasks", help="paper (default: the paper's 9 tasks, needs the HF hub), offline (built from "
                     "the run's held-out data), or lm-eval task names; repeat or comma-separate."),
    ] = None,
    num_fewshot: Annotated[int, typer.Option("--num-fewshot", min=0, help="Few-shot examples (paper: 0 and 5).")] = 0,
    limit: Annotated[float | None, typer.Option("--limit", min=0, help="Documents per task (N), or a fraction (<1).")] = None,
    loops: LoopsOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.")] = 16,
    device: DeviceOpt = "auto",
    results_dir: ResultsDir = Path("results"),
    format: FormatOpt = Format.table,
) -> None:
    """Downstream evaluation through lm-eval; writes <run>/eval/<task>.json for `meshctl report`."""
    documents: list[dict[str, Any]] = []
    skipped: list[str] = []
    with user_errors():
        from meshctl.analysis.evaluation import check_hub, evaluate_run, expand_tasks, require_lm_eval
        from meshctl.analysis.loading import resolve_runs

        require_lm_eval()
        names = expand_tasks(tasks)
        run_dirs = resolve_runs(target, results_dir)  # bad input (exit 2) before the hub's reachability
        check_hub(names)
        if not run_dirs:
            raise ValueError(f"sweep {target!r} has no runs; submit it with `meshctl sweep`")
        n_limit = int(limit) if limit is not None and limit >= 1 else limit
        single = len(run_dirs) == 1
        for run_dir in run_dirs:
            if not single and not (run_dir / "checkpoints" / "last.ckpt").is_file():
                skipped.append(run_dir.name)
                continue
            # lm-eval prints on stdout; keep stdout for the result alone
            with contextlib.redirect_stdout(sys.stderr):
                documents += evaluate_run(run_dir, names, num_fewshot=num_fewshot, limit=n_limit, n_loop=loops,
                                          batch_size=batch_size, device=pick_device(device))
    for name in skipped:
        sys.stderr.write(f"skipped {name}: no checkpoint yet\n")
    if format == Format.json:
        print_json({"results": documents, "skipped": skipped})
        return
    rows = [{**d, "n": (d.get("n_samples") or {}).get("effective")} for d in documents]
    print_table(rows, EVAL_COLUMNS, title=f"eval {target}")


def sample(
    run: RunArg,
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")] = ...,  # type: ignore[assignment]
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate at most.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy; else sample softmax(logits / T).")] = 0.0,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Sample among the k most likely tokens.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Full forward per token instead of the KV cache.")] = False,
    loops: LoopsOpt = None,
    device: DeviceOpt = "auto",
    results_dir: ResultsDir = Path("results"),
    format: FormatOpt = Format.table,
) -> None:
    """Continue a prompt with a trained run (greedy or temperature sampling); stops at end-of-document."""
    with user_errors():
        import torch

        from meshctl.analysis.generation import generate
        from meshctl.analysis.loading import load_run, resolve_run

        loaded = load_run(resolve_run(run, results_dir), device=pick_device(device))
        if loops is not None and not hasattr(loaded.model, "recurrence"):
            raise ValueError(f"--loops {loops}: a vanilla model has no loop to run at another depth")
        ids = loaded.tokenizer.encode(prompt, add_special_tokens=False).ids or [loaded.eod_token_id]
        device_ = next(loaded.model.parameters()).device
        generator = torch.Generator(device=device_).manual_seed(seed)
        (tokens,) = generate(loaded.model, [ids], max_new_tokens, temperature=temperature, top_k=top_k,
                             n_loop=loops, use_cache=not no_cache, stop_ids=[loaded.eod_token_id],
                             vocab_size=loaded.tokenizer.get_vocab_size(with_added_tokens=True), generator=generator)
        completion = loaded.tokenizer.decode(tokens)
    if format == Format.json:
        print_json({"run_id": loaded.run_dir.name, "prompt": prompt, "completion": completion, "tokens": tokens,
                    "temperature": temperature, "cache": not no_cache, "n_loop": loops})
        return
    sys.stdout.write(prompt + completion + "\n")

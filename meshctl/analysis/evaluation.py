"""`evaluate_run`: a trained run through lm-eval, results written to `<run_dir>/eval/<task>.json`.

Task names: lm-eval task or group names, the offline tasks (`meshctl.analysis.offline_tasks`), and two
aliases: `paper` = the MeSH paper's nine tasks (reference/mesh-paper.md §4) and `offline` = the three
offline tasks. Paper tasks download from the Hugging Face hub; where it cannot be reached (or
HF_DATASETS_OFFLINE is set and the datasets are not cached) the error says so in one line.

One file per (task, few-shot, depth): `<task>.json` for 0-shot at the trained depth, with `.<n>shot` and
`.loops<K>` inserted before `.json` otherwise (`lambada_openai.5shot.loops3.json`). Schema in
`result_document`. lm-eval is imported only inside these functions (it is the `eval` extra).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meshctl.analysis.offline_tasks import OFFLINE_TASKS, OfflineTaskSettings
from meshctl.errors import BadInput, MeshctlError
from meshctl.layout import EVAL_DIR, eval_result_name

SCHEMA = "meshctl.eval/1"
# The paper's nine downstream tasks and the metric each is reported with (acc_norm = byte-length normalised).
PAPER_METRICS: dict[str, str] = {
    "lambada_openai": "acc",
    "lambada_standard": "acc",
    "piqa": "acc_norm",
    "hellaswag": "acc_norm",
    "winogrande": "acc",
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
    "sciq": "acc_norm",
    "mmlu_continuation": "acc",
}
OFFLINE_METRICS = {"meshctl_cloze": "acc", "meshctl_cloze_mc": "acc", "meshctl_bpb": "bits_per_byte"}
ALIASES = {"paper": tuple(PAPER_METRICS), "offline": OFFLINE_TASKS}


def expand_tasks(tasks: list[str] | tuple[str, ...] | None) -> list[str]:
    """Aliases expanded, comma lists split, order kept, duplicates dropped. Default: `paper`."""
    names: list[str] = []
    for entry in tasks or ["paper"]:
        for name in (n.strip() for n in entry.split(",")):
            for task in ALIASES.get(name, (name,)):
                if task and task not in names:
                    names.append(task)
    if not names:
        raise BadInput("--tasks: no task given; use paper, offline, or lm-eval task names")
    return names


def result_path(run_dir: str | Path, task: str, num_fewshot: int, n_loop: int | None) -> Path:
    """`eval/<task>[.<n>shot][.loops<K>].json`; n_loop None means the trained depth."""
    return Path(run_dir) / EVAL_DIR / eval_result_name(task, num_fewshot, n_loop)


def _offline_env() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_hub(tasks: list[str], timeout: float = 3.0) -> None:
    """Fail in one line, before loading a model, when hub tasks are asked for and the hub is unreachable
    (offline mode set: the datasets may be cached, so the attempt is left to `datasets`)."""
    hub = [t for t in tasks if t not in OFFLINE_TASKS]
    if not hub or _offline_env():
        return
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    try:
        socket.create_connection((host, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        raise MeshctlError(
            f"{', '.join(hub)} need the Hugging Face hub and {host} cannot be reached; set HF_DATASETS_OFFLINE=1 "
            "to use cached datasets, or run --tasks offline (tasks built from the run's held-out data)"
        ) from None


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What `datasets` / `huggingface_hub` raise when a hub dataset is neither reachable nor cached."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("datasets.exceptions", "DatasetNotFoundError"), ("huggingface_hub.errors", "OfflineModeIsEnabled"),
                         ("huggingface_hub.errors", "LocalEntryNotFoundError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def check_task_names(names: list[str], where: str = "--tasks") -> None:
    """Refuse task names lm-eval does not know (meshctl's offline tasks and the paper's are known without
    asking it; other names cost one index of lm-eval's task files)."""
    others = [t for t in names if t not in OFFLINE_TASKS and t not in PAPER_METRICS]
    if not others:
        return
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    known = TaskManager().all_tasks
    unknown = [t for t in others if t not in known]
    if unknown:
        raise BadInput(f"{where}: unknown task {unknown[0]!r}; use paper, offline, meshctl_* or an lm-eval task name")


def require_lm_eval() -> str:
    try:
        import lm_eval
    except ImportError:
        raise MeshctlError("lm-eval is not installed; install the eval extra: pip install 'meshctl[eval]'") from None
    return lm_eval.__version__


def config_hash(config: Any) -> str:
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def evaluate_run(run_dir: str | Path, tasks: list[str] | None = None, *, num_fewshot: int = 0,
                 limit: int | float | None = None, n_loop: int | None = None, batch_size: int = 16,
                 device: str = "cpu", bootstrap_iters: int = 1000,
                 offline: OfflineTaskSettings | None = None) -> list[dict[str, Any]]:
    """Evaluate one run on `tasks` and write one JSON per task; returns the documents written."""
    version = require_lm_eval()
    names = expand_tasks(tasks)
    check_hub(names)
    run_dir = Path(run_dir)
    if n_loop is not None and n_loop < 1:
        raise BadInput(f"--loops {n_loop}: must be >= 1")

    import lm_eval
    from lm_eval.tasks import TaskManager

    from meshctl.analysis.lm_eval_adapter import MeshctlLM
    from meshctl.analysis.loading import load_run, read_spec
    from meshctl.analysis.offline_tasks import build_offline_tasks
    from meshctl.train.rundir import write_json_atomic

    run_spec = read_spec(run_dir)
    spec = run_spec.model_spec()
    if n_loop is not None and spec.family == "vanilla":
        raise BadInput(f"--loops {n_loop}: {run_dir.name} is a vanilla model; test-time depth applies to recursive models")
    if n_loop is not None and spec.family != "recursive" and n_loop != spec.n_loop:
        raise BadInput(f"--loops {n_loop}: a {spec.family} model has {spec.n_loop} distinct cores; its depth is fixed")
    include = None
    if any(t in OFFLINE_TASKS for t in names):
        include = str(run_dir / "eval" / "tasks")
        build_offline_tasks(run_spec.data.path, include, offline)
    manager = TaskManager(include_path=include, include_defaults=any(t not in OFFLINE_TASKS for t in names))
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        raise BadInput(f"--tasks: unknown task {unknown[0]!r}; use paper, offline, meshctl_* or an lm-eval task name")
    loaded = load_run(run_dir, device=device)
    depth = n_loop if n_loop is not None and n_loop != spec.n_loop else None
    lm = MeshctlLM(loaded.model, loaded.tokenizer, loaded.eod_token_id, n_loop=n_loop, batch_size=batch_size,
                   device=device)
    started = time.time()
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, bootstrap_iters=bootstrap_iters, log_samples=False)
    except _hub_errors() as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MeshctlError(f"lm-eval could not load a dataset from the Hugging Face hub ({first}); connect to the hub, "
                           "cache the datasets, or run --tasks offline") from None
    elapsed = time.time() - started
    documents = []
    for task in names:
        doc = result_document(out, task, version=version, run_dir=run_dir, num_fewshot=num_fewshot, limit=limit,
                              n_loop=n_loop if n_loop is not None else spec.n_loop, trained_n_loop=spec.n_loop,
                              step=loaded.step, elapsed=elapsed)
        path = result_path(run_dir, task, num_fewshot, depth)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, doc)
        documents.append({**doc, "path": str(path)})
    return documents


def result_document(out: dict[str, Any], task: str, *, version: str, run_dir: Path, num_fewshot: int,
                    limit: int | float | None, n_loop: int | None, trained_n_loop: int | None, step: int | None,
                    elapsed: float) -> dict[str, Any]:
    """The `eval/<task>.json` document:

        schema "meshctl.eval/1"; run_id; task; num_fewshot; limit (null = every document);
        n_loop (depth evaluated, null for vanilla) and trained_n_loop; checkpoint_step;
        metrics {name: value} and stderr {name: value|null} (lm-eval's "<metric>,none" keys, filter dropped);
        primary_metric (the paper's metric for its tasks) and primary (its value);
        higher_is_better {name: bool}; n_samples {original, effective}; subtasks [names] for groups;
        lm_eval_version; task_version; task_config_hash (sha256 of lm-eval's resolved task config, over
        the sorted subtask configs for a group); created (UTC ISO-8601); elapsed_s (the whole lm-eval call).
    """
    results = out["results"].get(task) or out.get("groups", {}).get(task) or {}
    metrics, stderr = {}, {}
    for key, value in results.items():
        if "," not in key:
            continue
        name, _filter = key.split(",", 1)
        if name.endswith("_stderr"):
            stderr[name.removesuffix("_stderr")] = value if isinstance(value, (int, float)) else None
        else:
            metrics[name] = value
    subtasks = list(out.get("group_subtasks", {}).get(task, []))
    configs = out.get("configs", {})
    config = configs.get(task) if task in configs else {t: configs.get(t) for t in sorted(subtasks)}
    primary_metric = PAPER_METRICS.get(task) or OFFLINE_METRICS.get(task) or next(iter(metrics), None)
    n_samples = out.get("n-samples", {}).get(task)
    if n_samples is None and subtasks:
        n_samples = {k: sum(out.get("n-samples", {}).get(t, {}).get(k, 0) for t in subtasks) for k in ("original", "effective")}
    return {
        "schema": SCHEMA,
        "run_id": run_dir.name,
        "task": task,
        "num_fewshot": num_fewshot,
        "limit": limit,
        "n_loop": n_loop,
        "trained_n_loop": trained_n_loop,
        "checkpoint_step": step,
        "metrics": metrics,
        "stderr": stderr,
        "primary_metric": primary_metric,
        "primary": metrics.get(primary_metric) if primary_metric else None,
        "higher_is_better": out.get("higher_is_better", {}).get(task, {}),
        "n_samples": n_samples,
        "subtasks": subtasks,
        "lm_eval_version": version,
        "task_version": out.get("versions", {}).get(task),
        "task_config_hash": config_hash(config),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
    }

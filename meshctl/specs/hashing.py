"""Content hashes: a run id is derived from the canonical resolved run spec, never chosen by hand.

Excluded from a run's identity: where things live and what carries them (results/run directories, the
executor and its resources, devices, nodes, parallel strategy, data workers) and who watches it (the
trackers in train.loggers, the planning sweep's name) — moving a study, switching
local -> SLURM or changing the GPU count must not re-run it. The data directory enters by
its final component only (`data/pile-deduped` and `/scratch/x/pile-deduped` are the same dataset), so two
studies on different datasets never share run ids.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath
from typing import Any, Callable

RUN_ID_LENGTH = 12


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any, length: int | None = None) -> str:
    h = hashlib.sha256(canonical_json(obj).encode()).hexdigest()
    return h[:length] if length else h


def identity(run_spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved run spec that decides what is computed."""
    ident = json.loads(canonical_json(run_spec))
    data = ident.get("data")
    if isinstance(data, dict):
        for key in ("path",):
            if data.get(key):
                data[key] = PurePath(str(data[key])).name
        for eval_set in (data.get("eval_sets") or {}).values():
            if isinstance(eval_set, dict) and eval_set.get("path"):
                eval_set["path"] = PurePath(str(eval_set["path"])).name
    for key in ("run_dir", "results_dir", "executor", "resources", "sweep"):
        ident.pop(key, None)
    # how many devices and which parallel strategy carry a run is the cluster's shape, not the experiment;
    # the trackers that watch it and the sweep that planned it (its W&B group) are not either
    for section, keys in (("train", ("devices", "num_nodes", "strategy", "loggers")), ("data", ("num_workers",))):
        for key in keys:
            (ident.get(section) or {}).pop(key, None)
    return ident


def run_id(run_spec: dict[str, Any]) -> str:
    return digest(identity(run_spec), RUN_ID_LENGTH)


_SEED = "__meshctl_seed__"


def run_ids_by_seed(run_spec: dict[str, Any]) -> Callable[[int], str]:
    """`run_id` of this spec with any seed, its canonical JSON built once: a sweep's seeds of one cell
    differ in the seed alone, so each further id costs one hash, not a dump and a sort of the whole spec."""
    ident = identity(run_spec)
    ident["seed"] = _SEED
    head, tail = canonical_json(ident).split(json.dumps(_SEED))
    return lambda seed: hashlib.sha256(f"{head}{int(seed)}{tail}".encode()).hexdigest()[:RUN_ID_LENGTH]

"""Find runs and load a trained model from its run directory (`meshctl.train.rundir` contract).

A run is named by a path to its directory, its run id, or a unique prefix of the id under
`<results>/runs/`; a sweep name expands to its runs through the ledger (`<results>/meshctl.sqlite`).
`load_run` rebuilds the model from `spec.json`, loads `checkpoints/last.ckpt` (a Lightning checkpoint
whose LightningModule holds the model as `.model`, so its keys carry a `model.` prefix) and opens the
tokenizer of the run's prepared data directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshctl.errors import BadInput
from meshctl.layout import LEDGER, RUNS  # noqa: F401  (where results live: meshctl/layout.py)

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from torch import nn

    from meshctl.specs.run import RunSpec


@dataclass(frozen=True)
class LoadedRun:
    """Unpacks as `model, spec, tokenizer = load_run(run_dir)`; also carries where it came from."""

    model: "nn.Module"
    spec: "RunSpec"
    tokenizer: "Tokenizer"
    run_dir: Path
    step: int | None  # optimizer steps behind the checkpoint
    eod_token_id: int

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.spec, self.tokenizer))


def is_run_dir(path: Path) -> bool:
    return (path / "spec.json").is_file()


def resolve_run(ref: str, results_dir: str | Path) -> Path:
    """A run directory from a path, a run id or a unique id prefix; BadInput says what was looked for."""
    path = Path(ref).expanduser()
    if is_run_dir(path):
        return path
    runs = Path(results_dir) / RUNS
    if (runs / ref).is_dir() and is_run_dir(runs / ref):
        return runs / ref
    matches = sorted(p for p in runs.glob(f"{ref}*") if is_run_dir(p)) if runs.is_dir() and "/" not in ref else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches[:4])
        raise BadInput(f"run {ref!r} is ambiguous under {runs} ({names}{', ...' if len(matches) > 4 else ''}); give more of the id")
    raise BadInput(f"run {ref!r}: no run directory (with spec.json) at that path or under {runs}; "
                   "give a run id, a unique prefix, or a run directory")


def resolve_runs(ref: str, results_dir: str | Path) -> list[Path]:
    """RUN (as `resolve_run`) or SWEEP: the sweep's run directories from the ledger, in sweep order."""
    try:
        return [resolve_run(ref, results_dir)]
    except BadInput as run_error:
        ledger_path = Path(results_dir) / LEDGER
        if not ledger_path.is_file():
            raise run_error from None
        from meshctl.orchestrate.ledger import Ledger

        with Ledger(ledger_path) as ledger:
            if ref not in ledger.sweeps():
                raise BadInput(f"{ref!r} is neither a run (path, id or id prefix) nor a sweep in {ledger_path}") from None
            rows = ledger.runs(ref)
        return [Path(r.run_dir) for r in rows]


def read_spec(run_dir: str | Path) -> "RunSpec":
    from meshctl.specs.run import parse_run_spec

    path = Path(run_dir) / "spec.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: unreadable run spec ({exc}); is {run_dir} a run directory?") from None
    return parse_run_spec(data, str(path))


def checkpoint_path(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise BadInput(f"{run_dir}: no checkpoint yet (checkpoints/last.ckpt); train the run first (`meshctl sweep` or `meshctl train`)")
    return path


def model_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's own state_dict from a Lightning checkpoint (`model.` prefix dropped, and the
    `_orig_mod.` that a whole-module torch.compile would add)."""
    state = checkpoint.get("state_dict", checkpoint)
    out = {}
    for key, value in state.items():
        if key.startswith("model."):
            out[key.removeprefix("model.").replace("_orig_mod.", "")] = value
    return out


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """The model in eval mode on `device`, the run's RunSpec and its tokenizer (see `LoadedRun`)."""
    import torch

    from meshctl.data.manifest import load_manifest
    from meshctl.data.tokenizer import load_tokenizer
    from meshctl.models import build

    run_dir = Path(run_dir)
    spec = read_spec(run_dir)
    ckpt = checkpoint_path(run_dir)
    model = build(spec.model_spec())
    try:
        checkpoint = torch.load(ckpt, map_location=device, weights_only=True)
    except Exception:  # a checkpoint with pickled objects beyond tensors: the run's own file, trusted
        checkpoint = torch.load(ckpt, map_location=device, weights_only=False)
    missing, unexpected = model.load_state_dict(model_state(checkpoint), strict=False)
    if missing or unexpected:
        raise BadInput(f"{ckpt}: does not match the model in spec.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.to(device).eval()
    try:
        manifest = load_manifest(spec.data.path)
    except BadInput as exc:
        raise BadInput(f"{run_dir}/spec.json data.path: {exc}") from None
    tokenizer = load_tokenizer(Path(spec.data.path) / manifest.tokenizer.path)
    step = checkpoint.get("global_step")
    return LoadedRun(model, spec, tokenizer, run_dir, int(step) if step is not None else None,
                     manifest.tokenizer.eod_token_id)

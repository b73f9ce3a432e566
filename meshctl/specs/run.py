"""Run specs: one training run (model x data x optimiser x seed), validated before anything starts.

A `RunSpec` as written by a user may leave hyperparameters out; `resolved()` fills them from the scale's
recipe (`meshctl.train.hparams`), turns the model into a full `ModelSpec` dict and token budgets into
steps, so the `spec.json` a run directory holds is self-contained: it alone rebuilds the run.
No torch here: specs are read by the CLI and the sweep planner.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from meshctl.errors import BadInput


class EvalSetSpec(BaseModel):
    """A named evaluation set: one split of a prepared data directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(None, description="prepared data directory; default: the run's data.path")
    split: str = Field("validation", description="split name in that directory's manifest")


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(..., description="prepared data directory (`meshctl data prepare`): manifest.json, *.bin/.idx")
    split: str = Field("train", description="split to train on")
    seq_len: int | None = Field(None, gt=0, description="tokens per training sequence; default: the scale's")
    mode: Literal["packed", "samples"] = Field(
        "packed",
        description="packed: documents concatenated and cut into windows; samples: one index entry per "
        "sequence (Pythia's preshuffled 2049-token samples)",
    )
    shuffle: bool | None = Field(
        None,
        description="shuffle windows each epoch (seeded); false keeps file order; default: true for packed, "
        "false for samples (Pythia's samples are stored shuffled, in its training order)",
    )
    eval_sets: dict[str, EvalSetSpec] | None = Field(
        None, description="name -> prepared dir + split; default {validation: data.path validation split}"
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")

    @property
    def shuffled(self) -> bool:
        return self.mode == "packed" if self.shuffle is None else self.shuffle


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: int | None = Field(None, gt=0, description="training tokens (rounded up to whole steps)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; give this or tokens")
    global_batch: int | None = Field(None, gt=0, description="sequences per optimizer step, all devices")
    global_batch_tokens: int | None = Field(None, gt=0, description="tokens per optimizer step (alternative)")
    micro_batch: int | None = Field(None, gt=0, description="sequences per device per forward pass")
    lr: float | None = Field(None, gt=0, description="peak learning rate; default: the scale's")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    warmup: float = Field(0.01, ge=0, lt=1, description="linear warmup, as a fraction of max_steps")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW eps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay (MeSH paper: 0.01)")
    decay_embeddings: bool = Field(False, description="also decay the input embedding")
    grad_clip: float | None = Field(1.0, ge=0, description="clip the global gradient norm; null or 0: off")
    precision: Literal["32", "bf16-mixed"] | None = Field(None, description="32 | bf16-mixed; default: the scale's")
    compile: bool = Field(False, description="torch.compile each layer (Block); the loop stays eager")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms (slower on GPU)")
    strategy: Literal["auto", "ddp", "ddp_zero1", "fsdp"] = Field(
        "auto", description="auto | ddp | ddp_zero1 (DDP + AdamW states sharded) | fsdp (FSDP2, full-state checkpoints)"
    )
    devices: int = Field(1, gt=0, description="devices per node")
    num_nodes: int = Field(1, gt=0, description="nodes")
    log_every: int | None = Field(None, gt=0, description="steps between metrics.jsonl records")
    val_every: int | None = Field(None, gt=0, description="steps between validations (and at the end)")
    val_batches: int | None = Field(None, gt=0, description="micro-batches per eval set per validation")
    ckpt_every: int | None = Field(None, gt=0, description="steps between checkpoints (and at the end)")
    loggers: tuple[Literal["tensorboard", "wandb", "csv"], ...] = Field(
        (),
        description="experiment trackers fed metrics.jsonl's scalars, under the run directory (meshctl.train.loggers); "
        "tensorboard and wandb need `pip install 'meshctl[tracking]'`; not part of the run id",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("loggers")
    @classmethod
    def _loggers_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once; name each logger once")
        return value

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def accumulate(self) -> int:
        """Micro-batches per device per optimizer step (resolved specs only)."""
        return self.global_batch // (self.micro_batch * self.world_size)  # type: ignore[operator]


class RunSpec(BaseModel):
    """One training run. `model` is a preset name or a dict (`{"preset": ..., "structure": ...}` or a full
    ModelSpec); `resolved()` makes it and every defaulted hyperparameter explicit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", description="run name (run dir name)")
    model: str | dict[str, Any] = Field(..., description="preset name, preset with changes, or a full ModelSpec")
    data: DataSpec = Field(..., description="training data and eval sets")
    train: TrainSpec = Field(default_factory=TrainSpec, description="optimiser, schedule, batch, precision, devices")
    seed: int = Field(1234, ge=0, description="seed for init and data order (Pythia used 1234)")
    sweep: str | None = Field(
        None, description="the sweep that planned this run (set by `meshctl sweep`; the W&B group); "
        "not part of the run id",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_type(cls, value: Any) -> Any:
        if not isinstance(value, (str, dict)):
            raise ValueError(f"expected a preset name or a mapping, got {type(value).__name__}")
        return value

    @field_validator("model")
    @classmethod
    def _model_resolves(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        from meshctl.models import resolve

        try:
            resolve(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            raise ValueError(f"{loc + ': ' if loc else ''}{err['msg'].removeprefix('Value error, ')}") from None
        return value

    def model_spec(self) -> Any:
        """The model as a `meshctl.models.ModelSpec`."""
        from meshctl.models import resolve

        return resolve(self.model)

    @property
    def is_resolved(self) -> bool:
        t = self.train
        return (
            isinstance(self.model, dict) and "preset" not in self.model and self.data.seq_len is not None
            and self.data.eval_sets is not None and self.data.shuffle is not None
            and t.max_steps is not None and t.tokens is None
            and t.global_batch is not None and t.global_batch_tokens is None and t.micro_batch is not None
            and t.lr is not None and t.precision is not None and None not in (
                t.log_every, t.val_every, t.val_batches, t.ckpt_every)
        )

    def resolved(self) -> RunSpec:
        """Every default filled in from the scale's recipe; BadInput names the field when one cannot be."""
        from meshctl.train.hparams import default_strategy, defaults_for

        _check_trackers_installed(self.train.loggers)
        spec = self.model_spec()
        hp_values = defaults_for(spec)

        def pick(section: str, field: str, value: Any) -> Any:
            if value is not None:
                return value
            if field not in hp_values:
                raise BadInput(
                    f"{section}.{field}: the model ({spec.family} {spec.structure}, d={spec.n_embd}) matches no "
                    f"preset scale, so there is no default; set {section}.{field}"
                )
            return hp_values[field]

        t = self.train
        seq_len = pick("data", "seq_len", self.data.seq_len)
        if self.data.seq_len is None and seq_len > spec.block_size:
            # The paper trains its Pythia shapes at 4096 while Pythia's block_size is 2048; no weight
            # depends on block_size (rotary, no position table), so the recipe's length wins.
            spec = spec.variant(block_size=seq_len)
        if seq_len > spec.block_size:
            raise BadInput(f"data.seq_len: {seq_len} exceeds the model's block_size {spec.block_size}; lower it")

        if t.global_batch is not None and t.global_batch_tokens is not None:
            raise BadInput("train.global_batch_tokens: give global_batch (sequences) or global_batch_tokens, not both")
        if t.global_batch_tokens is not None:
            if t.global_batch_tokens % seq_len:
                raise BadInput(
                    f"train.global_batch_tokens: {t.global_batch_tokens} is not a multiple of data.seq_len {seq_len}"
                )
            global_batch = t.global_batch_tokens // seq_len
        else:
            global_batch = pick("train", "global_batch", t.global_batch)

        world = t.world_size
        if t.micro_batch is not None:
            micro = t.micro_batch
        else:
            per_device = max(global_batch // world, 1)
            cap = min(pick("train", "micro_batch", None), per_device)
            micro = max(m for m in range(1, cap + 1) if per_device % m == 0)
        if global_batch % (micro * world):
            raise BadInput(
                f"train.global_batch: {global_batch} sequences is not divisible by micro_batch {micro} x devices "
                f"{t.devices} x num_nodes {t.num_nodes} = {micro * world}; change global_batch or micro_batch"
            )

        if t.tokens is not None and t.max_steps is not None:
            raise BadInput("train.max_steps: give train.tokens or train.max_steps, not both")
        if t.max_steps is not None:
            max_steps = t.max_steps
        else:
            tokens = pick("train", "tokens", t.tokens)
            max_steps = math.ceil(tokens / (global_batch * seq_len))

        data_path = str(Path(self.data.path).expanduser().absolute())
        eval_sets = self.data.eval_sets
        if eval_sets is None:
            eval_sets = {"validation": EvalSetSpec(path=data_path, split="validation")}
        else:
            if not eval_sets:
                raise BadInput("data.eval_sets: needs at least one eval set (omit it for the validation split)")
            eval_sets = {
                name: EvalSetSpec(
                    path=str(Path(e.path).expanduser().absolute()) if e.path is not None else data_path, split=e.split
                )
                for name, e in eval_sets.items()
            }

        precision = pick("train", "precision", t.precision)
        strategy = t.strategy
        if strategy == "auto" and world > 1:  # the least sharding whose per-rank memory fits (hparams)
            strategy = default_strategy(spec, world, micro, seq_len, precision)
        train = t.model_copy(update={
            "tokens": None, "max_steps": max_steps, "global_batch": global_batch, "global_batch_tokens": None,
            "micro_batch": micro, "lr": pick("train", "lr", t.lr), "precision": precision, "strategy": strategy,
            **{f: pick("train", f, getattr(t, f)) for f in ("log_every", "val_every", "val_batches", "ckpt_every")},
        })
        data = self.data.model_copy(
            update={"path": data_path, "seq_len": seq_len, "eval_sets": eval_sets, "shuffle": self.data.shuffled}
        )
        out = self.model_copy(update={"model": spec.model_dump(mode="json"), "data": data, "train": train})
        return RunSpec.model_validate(out.model_dump(mode="json"))

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def short_hash(self) -> str:
        """The run id: a hash of the resolved spec's identity (`meshctl.specs.hashing.run_id`)."""
        from meshctl.specs.hashing import run_id

        return run_id(self.resolved().model_dump(mode="json"))

    @property
    def tokens_per_step(self) -> int:
        return self.train.global_batch * self.data.seq_len  # type: ignore[operator]


# Optional packages behind `train.loggers`, each named as its logger (csv is Lightning's own); checked
# without importing them.
TRACKER_PACKAGES = ("tensorboard", "wandb")


def _check_trackers_installed(loggers: tuple[str, ...]) -> None:
    from importlib.util import find_spec

    missing = [name for name in loggers if name in TRACKER_PACKAGES and find_spec(name) is None]
    if missing:
        raise BadInput(f"train.loggers: {', '.join(missing)} is not installed; pip install 'meshctl[tracking]' "
                       f"or remove it from train.loggers")
    if "wandb" in loggers and not _wandb_can_log():
        raise BadInput("train.loggers: wandb has no API key here and is not offline; run `wandb login`, set "
                       "WANDB_API_KEY, or set WANDB_MODE=offline (then `wandb sync` the run's wandb/latest-run)")


def _wandb_can_log() -> bool:
    """Whether wandb.init will find a mode that needs no key or a key (environment, .netrc, its settings
    file), checked without importing wandb; otherwise it fails once training has set up (a traceback)."""
    import configparser
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled") or os.environ.get("WANDB_API_KEY"):
        return True
    settings = configparser.ConfigParser()
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "wandb")
    try:
        settings.read(os.path.join(config_dir, "settings"))
    except configparser.Error:
        pass
    if settings.has_section("default") and (settings["default"].get("api_key") or settings["default"].get(
            "mode", "").lower() in ("offline", "dryrun", "disabled")):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def validation_message(exc: ValidationError, source: str | None = None) -> str:
    """First error as `field.path: message` (prefixed with the file it came from)."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    text = f"{loc}: {msg}" if loc else msg
    return f"{source}: {text}" if source else text


def parse_run_spec(data: Any, source: str | None = None) -> RunSpec:
    """Validate a mapping as a RunSpec; errors become BadInput naming the field."""
    if not isinstance(data, dict):
        raise BadInput(f"{source or 'run spec'}: expected a mapping with model, data, train, got {type(data).__name__}")
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise BadInput(validation_message(exc, source)) from None


def load_run_spec(path: str | Path) -> RunSpec:
    """Read a RunSpec from a YAML or JSON file; syntax errors name the line, field errors the field path."""
    from meshctl.specs.files import read_spec_file

    return parse_run_spec(read_spec_file(path, "run spec"), str(path))

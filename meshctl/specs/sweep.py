"""Sweep specs: a YAML study (scale groups x variants x seeds) expanded into validated runs.

A scale group compares models at matched compute: its vanilla reference fixes width, vocabulary and
depth, and every variant must unroll to the same depth (the `n_layer` the variant inherits from the
reference is checked by `ModelSpec`) unless the group says `matched_compute: false`. The reference is a
preset name (`tiny-128`), a preset with changes (`{preset: tiny-128, n_layer: 6}`) or a full vanilla
ModelSpec mapping; a variant is the reference's changes with its own on top. Everything is checked
before anything is submitted; errors name the YAML path of the field and say how to fix it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from meshctl.errors import BadInput
from meshctl.models.spec import Recurrence
from meshctl.executor_kinds import ExecutorKind
from meshctl.specs.hashing import digest, run_ids_by_seed
from meshctl.specs.run import RunSpec, validation_message

if TYPE_CHECKING:
    from meshctl.models.spec import ModelSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Variant(BaseModel):
    """Recursive variants of a group's reference model; list values expand as a grid."""

    model_config = ConfigDict(extra="forbid")

    structure: str = Field(..., description="the paper's layer config, e.g. 4+8R2+4 (4+8+8+4 for vanilla_mesh)")
    recurrence: Recurrence | list[Recurrence] = Field("base", description="state passing; a list expands")
    family: Literal["recursive", "vanilla_mesh"] = Field("recursive", description="recursive | vanilla_mesh")
    mesh_slots: int | list[int] | None = Field(None, description="MeSH buffer slots B; a list expands")
    label: str | None = Field(None, description="name of this variant in reports (default: its recurrence)")
    model: dict[str, Any] = Field(default_factory=dict, description="other ModelSpec fields to change")
    train: dict[str, Any] = Field(default_factory=dict, description="training overrides for this variant")


class Group(BaseModel):
    """One scale: a vanilla reference and the variants compared with it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=NAME_PATTERN, description="group name, e.g. the scale (160m)")
    vanilla: str | dict[str, Any] = Field(
        ..., description="the vanilla reference: a preset (pythia-160m), a preset with changes or a full spec")
    include_vanilla: bool = Field(True, description="also train the vanilla reference")
    matched_compute: bool = Field(True, description="variants must unroll to the reference's depth")
    variants: list[Variant] = Field(default_factory=list, description="recursive / MeSH variants")
    train: dict[str, Any] = Field(default_factory=dict, description="training overrides for this scale (lr, batch)")
    resources: dict[str, Any] = Field(default_factory=dict, description="executor resource overrides")

    @field_validator("vanilla", mode="before")
    @classmethod
    def _known_vanilla(cls, value: Any) -> Any:
        model = reference_model(value)
        if model.family != "vanilla":
            raise ValueError(f"the reference is a {model.family} model ({model.structure}) but must be vanilla: "
                             "name a vanilla preset (e.g. pythia-410m) or drop family/structure and list the "
                             "recursive model under variants")
        return value


def reference_changes(vanilla: str | dict[str, Any]) -> dict[str, Any]:
    """A group's reference as model changes: `{"preset": name}` for a name, else the mapping as written."""
    return {"preset": vanilla} if isinstance(vanilla, str) else dict(vanilla)


def reference_model(vanilla: Any) -> "ModelSpec":
    """The resolved reference model of a group's `vanilla` (ValueError with a one-line message)."""
    from meshctl.models.presets import resolve

    if not isinstance(vanilla, (str, dict)):
        raise ValueError("expected a preset name (tiny-128), a preset with changes ({preset: tiny-128, n_layer: 6}) "
                         f"or a full model spec mapping, got {type(vanilla).__name__}")
    try:
        return resolve(reference_changes(vanilla))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "not a model field; remove it or check its spelling"
        raise ValueError(f"{where}: {msg}" if where else msg) from None


class ExecutorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ExecutorKind = Field("local", description="local processes or SLURM (meshctl/executor_kinds.py)")
    max_parallel: int = Field(1, gt=0, description="runs at once (local) / array parallelism (slurm)")
    resources: dict[str, Any] = Field(default_factory=dict, description="default resources of every run")


class EvalPlan(BaseModel):
    """Downstream evaluation of every run once it has trained: in its local lane right after training,
    or on SLURM as a dependent job array (each task starts when its training task succeeded)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(["offline"], min_length=1, description="lm-eval tasks or aliases: paper, offline")
    num_fewshot: int = Field(0, ge=0, description="few-shot examples")
    limit: float | None = Field(None, gt=0, description="documents per task (>= 1) or a fraction (< 1)")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=NAME_PATTERN, description="sweep name (status/report key)")
    description: str = Field("", description="what the sweep reproduces")
    data: dict[str, Any] = Field(..., description="RunSpec data section shared by all runs")
    train: dict[str, Any] = Field(default_factory=dict, description="RunSpec train defaults for all runs")
    seeds: list[int] = Field([1234], min_length=1, description="one run per seed per model")
    groups: list[Group] = Field(..., min_length=1, description="scale groups")
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec, description="where runs execute")
    eval: EvalPlan | None = Field(None, description="evaluate each run after it trains (meshctl eval)")


@dataclass
class PlannedRun:
    run_id: str
    spec: RunSpec  # resolved
    labels: dict[str, Any]
    resources: dict[str, Any]
    where: str  # YAML path it came from, for messages
    extra: dict[str, Any] = field(default_factory=dict)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _yaml_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_sweep(data: Any, source: str = "sweep") -> SweepSpec:
    if not isinstance(data, dict):
        raise BadInput(f"{source}: expected a mapping with name, data, groups (got {type(data).__name__})")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        raise BadInput(f"{source}: {_yaml_path(tuple(err.get('loc', ())))}: {msg}") from None


def load_sweep(path: str | Path) -> tuple[SweepSpec, dict[str, Any]]:
    """The validated spec and the raw mapping (hashed for provenance)."""
    from meshctl.specs.files import read_spec_file

    data = read_spec_file(path, "sweep spec")
    return parse_sweep(data, str(path)), data


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        out.update(layer)
    return out


def _model_changes(group: Group, variant: Variant, recurrence: str, slots: int | None) -> dict[str, Any]:
    # the reference's changes under the variant's: it inherits width, vocabulary and depth
    changes: dict[str, Any] = {**reference_changes(group.vanilla), "family": variant.family,
                               "structure": variant.structure, "recurrence": recurrence, **variant.model}
    if slots is not None:
        changes["mesh_slots"] = slots
    if not group.matched_compute and "n_layer" not in variant.model:
        changes["n_layer"] = None  # the reference's depth is not checked
    return changes


def _check_tokens(spec: RunSpec, raw_train: dict[str, Any], where: str) -> None:
    tokens = raw_train.get("tokens")
    per_step = spec.tokens_per_step
    if tokens is not None and tokens % per_step:
        lower, upper = tokens // per_step * per_step, (tokens // per_step + 1) * per_step
        raise BadInput(
            f"{where}: train.tokens {tokens:,} is not a multiple of the global batch "
            f"({spec.train.global_batch} x {spec.data.seq_len} = {per_step:,} tokens); use {lower:,} or {upper:,}"
        )


def _check_resources(spec: RunSpec, resources: dict[str, Any], where: str) -> None:
    """Lightning needs one task per device: the scheduler's shape must be the trainer's."""
    from meshctl.orchestrate.executors import Resources

    try:
        Resources.model_validate(resources)
    except ValidationError as exc:
        raise BadInput(f"{where}: resources.{validation_message(exc)}") from None
    t = spec.train
    for key, value, field_name in (("gpus_per_node", t.devices, "devices"), ("tasks_per_node", t.devices, "devices"),
                                   ("nodes", t.num_nodes, "num_nodes")):
        if key in resources and resources[key] != value:
            raise BadInput(f"{where}: resources.{key} is {resources[key]} but train.{field_name} is {value}; "
                           f"make them equal (Lightning runs one process per device)")


def expand(sweep: SweepSpec, source: str = "sweep") -> list[PlannedRun]:
    """Every run of the sweep, resolved and validated, in a deterministic order."""
    planned: list[PlannedRun] = []
    seen: dict[str, str] = {}
    for gi, group in enumerate(sweep.groups):
        cells: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        if group.include_vanilla:
            cells.append((f"groups[{gi}].vanilla", reference_changes(group.vanilla), {},
                          {"variant": "vanilla", "family": "vanilla"}))
        for vi, variant in enumerate(group.variants):
            grid = itertools.product(_as_list(variant.recurrence), _as_list(variant.mesh_slots))
            for recurrence, slots in grid:
                label = variant.label or (recurrence if slots is None else f"{recurrence} B={slots}")
                labels = {"variant": label, "family": variant.family, "recurrence": recurrence}
                if slots is not None:
                    labels["mesh_slots"] = slots
                cells.append((f"groups[{gi}].variants[{vi}]", _model_changes(group, variant, recurrence, slots),
                              variant.train, labels))
        for where, model, variant_train, labels in cells:
            raw_train = _merge(sweep.train, group.train, variant_train)
            resources = _merge(sweep.executor.resources, group.resources)
            first: RunSpec | None = None
            for seed in sweep.seeds:
                if first is None or type(seed) is not int or seed < 0:
                    # `sweep` names the W&B group of the run's trackers; it is not part of the run id
                    raw = {"model": model, "data": sweep.data, "train": raw_train, "seed": seed, "sweep": sweep.name}
                    try:
                        spec = RunSpec.model_validate(raw).resolved()
                    except ValidationError as exc:
                        raise BadInput(f"{source}: {where}: {validation_message(exc)}") from None
                    except BadInput as exc:
                        raise BadInput(f"{source}: {where}: {exc}") from None
                if first is None:
                    _check_tokens(spec, raw_train, f"{source}: {where}")
                    _check_resources(spec, resources, f"{source}: {where}")
                    first, ids, model_spec = spec, run_ids_by_seed(spec.model_dump(mode="json")), spec.model_spec()
                else:
                    # the seed enters a run spec but not its resolution: the cell's other seeds are copies
                    spec = first.model_copy(update={"seed": seed})
                rid = ids(seed)
                if rid in seen:
                    raise BadInput(f"{source}: {where} duplicates the run of {seen[rid]} (seed {seed}); remove one")
                seen[rid] = where
                planned.append(PlannedRun(
                    run_id=rid, spec=spec, where=where,
                    labels={"sweep": sweep.name, "group": group.name, **labels,
                            "structure": model_spec.structure, "seed": seed},
                    resources=resources, extra={"model_spec": model_spec},
                ))
    return planned


def sweep_hash(raw: dict[str, Any]) -> str:
    return digest(raw, 16)

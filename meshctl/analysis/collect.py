"""A sweep as a tidy pandas DataFrame: one row per run, from the ledger and the run directories.

Every run of the sweep has a row, finished or not: its identity (labels from the sweep expansion),
its state (`meshctl.orchestrate.status.observe`, read-only), what its spec implies (parameter counts,
FLOPs/token under the "palm" formula, planned tokens) and, once completed, its results (`final.json`
and `eval/*.json`). Result columns of unfinished runs are empty. Columns:

    identity    sweep group variant family recurrence mesh_slots structure shape seed run_id cell position
    state       state step total_steps detail
    counts      params_{total,embedding,non_embedding,unrolled_non_embedding,recurrence}
                non_embedding_vs_vanilla_pct flop_formula flops_per_token tokens train_flops
    results     tokens_trained train_loss eval_set val_loss perplexity val_loss_<set> ppl_<set>
                tokens_per_s mfu completed_at
    downstream  acc_<k>shot_<task> (the task's primary metric, acc or acc_norm, as a fraction),
                acc_<k>shot_avg, acc_<k>shot_tasks; <metric>_<k>shot_<task> for other metrics;
                subset_<k>shot_<task>: the --limit of an evaluation on part of the task's documents
                (absent for whole tasks), subset_<k>shot_avg = 1 when the average includes one
    depth       loops<K>_<metric>_<k>shot_<task>, loops<K>_acc_<k>shot_avg: evaluations at every depth of a
                recursive run evaluated at another one too (meshctl eval --loops K; meshctl.analysis.depth)
    deltas      delta_val_loss_vs_vanilla delta_perplexity_vs_vanilla delta_acc_<k>shot_avg_vs_vanilla
                (against the mean of the completed seeds of the row's reference)
    spec        model.<field> train.<field> data.seq_len data.path run_dir

`cell` names the runs that differ only by seed (a hash of the run identity without the seed): the
report averages over it. `shape` is the width and unrolled depth (`d128 L6`): the reference of a row,
for `non_embedding_vs_vanilla_pct` and the deltas, is the vanilla model of its group with the same shape,
the one it is matched to: the group's vanilla run, or its `vanilla` reference when the sweep does not
train it (`include_vanilla: false`). A row of no vanilla model's shape has no reference: its deltas are
empty rather than against a model of another depth.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshctl.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd

    from meshctl.orchestrate.ledger import Ledger

FLOP_FORMULA = "palm"
ACCURACY_METRICS = ("acc_norm", "acc")  # lm-eval names; the paper averages these (mesh-paper.md §4)
RECURSIVE_ONLY = ("recurrence", "mesh_slots", "n_prelude", "n_core", "n_loop", "n_coda")
_FEWSHOT = re.compile(r"^acc_(\d+)shot_avg$")


# Text columns whose values can look like numbers (a vanilla structure "24", precision "32", a run id of
# digits): `read_csv` keeps them text. Everything else reads back with plain `pandas.read_csv`.
TEXT_COLUMNS = (
    "sweep", "group", "variant", "family", "recurrence", "structure", "shape", "run_id", "cell", "state",
    "detail", "flop_formula", "eval_set", "completed_at", "model.family", "model.recurrence", "train.precision",
    "train.strategy", "train.betas", "data.path", "run_dir",
)


def read_csv(path: str | Path) -> "pd.DataFrame":
    """A report CSV back as the frame `collect` built."""
    import pandas as pd

    header = pd.read_csv(path, nrows=0).columns
    return pd.read_csv(path, dtype={c: "str" for c in TEXT_COLUMNS if c in header})


def resolve_sweep(results_dir: str | Path, sweep: str | None) -> str:
    """The sweep to report: the one named, or the most recently updated; BadInput names the fix."""
    from meshctl.layout import require_ledger
    from meshctl.orchestrate.ledger import Ledger

    path = require_ledger(results_dir)
    with Ledger(path) as ledger:
        known = ledger.sweeps()
    if sweep is None:
        if not known:
            raise BadInput(f"--results-dir: the ledger at {path} has no sweeps; run `meshctl sweep SPEC` first")
        return known[0]
    if sweep not in known:
        raise BadInput(f"SWEEP: no sweep named {sweep!r} in {path} (known: {', '.join(known) or 'none yet'})")
    return sweep


def eval_documents(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's `eval/*.json` documents (meshctl.analysis.evaluation's schema); unreadable ones skipped."""
    docs = []
    for path in sorted((Path(run_dir) / "eval").glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("metrics"), dict) and doc.get("task"):
            docs.append(doc)
    return docs


def primary_value(doc: dict[str, Any]) -> tuple[str, float] | None:
    """(column prefix: `acc` for accuracies, else the metric's name, value) of an eval document."""
    metrics = doc["metrics"]
    metric = doc.get("primary_metric") or next((m for m in ACCURACY_METRICS if m in metrics), None)
    value = doc.get("primary", metrics.get(metric)) if metric else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return ("acc" if metric in ACCURACY_METRICS else metric), float(value)


def averaged_tasks(tasks: Any) -> list[str]:
    """The tasks a k-shot average is over: the paper's own when any ran, else all (offline tasks)."""
    from meshctl.analysis.evaluation import PAPER_METRICS

    tasks = list(tasks)
    return [t for t in tasks if t in PAPER_METRICS] or tasks


def read_evals(run_dir: str | Path, docs: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """Eval documents (`docs`, default the run's) as flat columns; evaluations at a test-time depth other
    than the trained one are left out."""
    out: dict[str, float] = {}
    for doc in eval_documents(run_dir) if docs is None else docs:
        if doc.get("n_loop") is not None and doc.get("n_loop") != doc.get("trained_n_loop", doc.get("n_loop")):
            continue
        primary = primary_value(doc)
        if primary is None:
            continue
        prefix, value = primary
        shot = int(doc.get("num_fewshot") or 0)
        out[f"{prefix}_{shot}shot_{doc['task']}"] = value
        if isinstance(doc.get("limit"), (int, float)):  # part of the task only: not comparable with whole ones
            out[f"subset_{shot}shot_{doc['task']}"] = float(doc["limit"])
    for shot in sorted({int(k.split("_")[1].removesuffix("shot")) for k in out if k.startswith("acc_")}):
        tasks = averaged_tasks(k.removeprefix(f"acc_{shot}shot_") for k in out if k.startswith(f"acc_{shot}shot_"))
        out[f"acc_{shot}shot_avg"] = sum(out[f"acc_{shot}shot_{t}"] for t in tasks) / len(tasks)
        out[f"acc_{shot}shot_tasks"] = len(tasks)
        if any(f"subset_{shot}shot_{t}" in out for t in tasks):
            out[f"subset_{shot}shot_avg"] = 1.0
    return out


def fewshots(columns: Any) -> list[int]:
    """The few-shot settings with downstream averages among `columns`, e.g. [0, 5]."""
    return sorted(int(m.group(1)) for c in columns if (m := _FEWSHOT.match(str(c))))


def _model_fields(model: Any) -> dict[str, Any]:
    """The resolved ModelSpec's fields, with those that do not apply to its family blanked (a vanilla
    spec carries the default recurrence 'base'; it means nothing there)."""
    fields = model.model_dump(mode="json")
    if model.family == "vanilla":
        for key in RECURSIVE_ONLY:
            fields[key] = None
    return fields


def _flat(section: str, values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value)
        out[f"{section}.{key}"] = value
    return out


def _cell_id(spec: dict[str, Any]) -> str:
    from meshctl.specs.hashing import digest, identity

    ident = identity(spec)
    ident.pop("seed", None)
    return digest(ident, 12)


def shape(model: Any) -> str:
    """Width and unrolled depth, what matched compute holds equal: `d128 L6`."""
    return f"d{model.n_embd} L{model.n_unrolled}"


def _references(ledger: "Ledger", sweep: str, rows: list[Any]) -> dict[tuple[str, str], int]:
    """(group, shape) -> non-embedding parameters of the group's vanilla model of that shape: its run,
    else the group's `vanilla` reference."""
    from meshctl.models import count_params
    from meshctl.models.spec import ModelSpec
    from meshctl.specs.sweep import reference_model

    refs: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.labels.get("family") == "vanilla":
            model = ModelSpec.model_validate(row.spec["model"])
            refs.setdefault((row.labels.get("group"), shape(model)), count_params(model).non_embedding)
    raw = ledger.sweep_spec(sweep) or {}
    for group in raw.get("groups") or []:
        try:
            model = reference_model(group.get("vanilla"))
        except ValueError:
            continue  # a preset renamed since the sweep was submitted: no reference
        refs.setdefault((group.get("name"), shape(model)), count_params(model).non_embedding)
    return refs


def run_record(row: Any, status: Any, references: dict[tuple[str, str], int]) -> dict[str, Any]:
    """One run as a flat record (see the module docstring for the columns)."""
    from meshctl.analysis.depth import depth_columns
    from meshctl.models import count_params, flops_per_token
    from meshctl.models.spec import ModelSpec
    from meshctl.train.rundir import read_final

    spec = row.spec
    model = ModelSpec.model_validate(spec["model"])
    counts = count_params(model)
    seq_len = spec["data"].get("seq_len")
    steps = spec["train"].get("max_steps")
    tokens = steps * spec["train"]["global_batch"] * seq_len if steps and seq_len else None
    fpt = flops_per_token(model, seq_len, FLOP_FORMULA)
    labels = row.labels
    reference = references.get((labels.get("group"), shape(model)))
    rec: dict[str, Any] = {
        "sweep": labels.get("sweep"), "group": labels.get("group"), "variant": labels.get("variant"),
        "family": labels.get("family", model.family), "recurrence": labels.get("recurrence"),
        "mesh_slots": labels.get("mesh_slots", model.mesh_slots), "structure": labels.get("structure", model.structure),
        "shape": shape(model), "seed": labels.get("seed", spec.get("seed")), "run_id": row.run_id,
        "cell": _cell_id(spec), "position": row.position,
        "state": status.state, "step": status.step, "total_steps": status.total_steps or steps,
        "detail": status.detail,
        "params_total": counts.total, "params_embedding": counts.embedding,
        "params_non_embedding": counts.non_embedding,
        "params_unrolled_non_embedding": counts.unrolled_non_embedding, "params_recurrence": counts.recurrence,
        "non_embedding_vs_vanilla_pct": 100.0 * (counts.non_embedding / reference - 1.0) if reference else None,
        "flop_formula": FLOP_FORMULA, "flops_per_token": fpt, "tokens": tokens,
        "train_flops": fpt * tokens if tokens else None,
    }
    eval_sets = list(spec["data"].get("eval_sets") or {})
    final = (read_final(row.run_dir) if status.state == "completed" else None) or {}
    rec.update({
        "tokens_trained": final.get("tokens", status.tokens), "train_loss": final.get("train_loss"),
        "eval_set": final.get("eval_set") or ("validation" if "validation" in eval_sets else next(iter(eval_sets), None)),
        "val_loss": final.get("val_loss"), "perplexity": final.get("perplexity"),
    })
    val = final.get("val") or {}
    for name in dict.fromkeys([*eval_sets, *val]):  # the columns exist before any run finishes
        rec[f"val_loss_{name}"] = (val.get(name) or {}).get("loss")
        rec[f"ppl_{name}"] = (val.get(name) or {}).get("perplexity")
    rec.update({"tokens_per_s": final.get("tokens_per_s"), "mfu": final.get("mfu"),
                "completed_at": final.get("completed_at")})
    if final:
        docs = eval_documents(row.run_dir)  # read once for both
        rec.update(read_evals(row.run_dir, docs))
        rec.update(depth_columns(docs))  # test-time depth: meshctl.analysis.depth
    rec.update(_flat("model", _model_fields(model)))
    rec.update(_flat("train", spec.get("train", {})))
    rec["data.seq_len"], rec["data.path"] = seq_len, spec["data"].get("path")
    rec["run_dir"] = str(row.run_dir)
    return rec


def add_deltas(df: "pd.DataFrame") -> "pd.DataFrame":
    """Differences against the mean of the completed runs of each row's reference (same group, same shape)."""
    import pandas as pd

    targets = ["val_loss", "perplexity", *(f"acc_{k}shot_avg" for k in fewshots(df.columns))]
    vanilla = df[(df["family"] == "vanilla") & (df["state"] == "completed")]
    keys = pd.MultiIndex.from_frame(df[["group", "shape"]])
    new = {}
    for col in targets:
        if col not in df:
            continue
        ref = vanilla.groupby(["group", "shape"])[col].mean().reindex(keys)
        new[f"delta_{col}_vs_vanilla"] = df[col] - ref.to_numpy()
    return pd.concat([df, pd.DataFrame(new, index=df.index)], axis=1) if new else df


def _order(columns: list[str]) -> list[str]:
    """Identity and results first, evaluations and deltas next, spec fields last."""
    spec = [c for c in columns if c.startswith(("model.", "train.", "data."))]
    tail = [c for c in ("run_dir",) if c in columns]
    rest = [c for c in columns if c not in spec and c not in tail]
    return rest + spec + tail


def normalize(df: "pd.DataFrame") -> "pd.DataFrame":
    """Dtypes a CSV/JSON round trip gives back: missing values NaN, all-missing columns float,
    integer columns with gaps float, text as strings."""
    import pandas as pd

    out = {}
    for col in df.columns:
        series = df[col]
        if series.isna().all():
            out[col] = series.astype("float64")
            continue
        values = series.dropna()
        if values.map(lambda v: isinstance(v, bool)).all():
            out[col] = series.astype("boolean") if series.isna().any() else series.astype(bool)
        elif values.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all():
            numeric = pd.to_numeric(series)
            out[col] = numeric.astype("float64") if series.isna().any() else numeric
        else:
            out[col] = series.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return pd.DataFrame(out, index=df.index)


def collect(results_dir: str | Path, sweep: str | None = None) -> "pd.DataFrame":
    """The tidy frame of a sweep (default: the most recently updated one); `df.attrs["sweep"]` names it."""
    import pandas as pd

    from meshctl.orchestrate.ledger import Ledger
    from meshctl.layout import ledger_path
    from meshctl.orchestrate.status import observe

    name = resolve_sweep(results_dir, sweep)
    with Ledger(ledger_path(results_dir)) as ledger:
        rows = ledger.runs(name)
        statuses = {s.run_id: s for s in observe(ledger, name, record=False)}
        refs = _references(ledger, name, rows)
    records = [run_record(r, statuses[r.run_id], refs) for r in rows]
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return df
    df = add_deltas(normalize(df))
    df = df[_order(list(df.columns))]
    df.attrs["sweep"] = name
    return df

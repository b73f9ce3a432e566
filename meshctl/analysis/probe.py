"""Probes of hidden states, as in the MeSH paper §4.1 / Figs. 3-5 (reference/mesh-paper.md §5.4).

On N windows of held-out text, per sample (a seq x n_embd matrix per state):

1. Relative update magnitude of each computational stage f (prelude, each core iteration, coda):
   2 ||f(h) - h||_F / (||f(h)||_F + ||h||_F). For a core iteration h is the loop state h^(t-1) entering it
   and f(h) the core's output before the recurrence combines it (for MeSH the paper leaves this open; we
   take core input vs core output). Prelude: h_emb -> prelude output; coda: h^(K) -> h_out.
2. Pairwise CKA with an RBF kernel (Kornblith et al. 2019) between the states h_emb, h^(0) (loop input),
   h^(1..K) (after each iteration) and h_out (coda output, before the final LayerNorm). Bandwidth: the
   median heuristic of Kornblith et al.'s `gram_rbf` with threshold 1, i.e. K_ij = exp(-d_ij^2 / (2 m))
   with m the median of the squared pairwise distances between the sample's tokens (diagonal included),
   per matrix, so CKA is invariant to rotations and to rescaling of either state.
3. Normalised singular-value spectrum of each state matrix: the top 50 sigma_i / sigma_0 (uncentred).

Every metric is averaged over samples (mean and std). Vanilla models are probed layer by layer (stages
layer_1..layer_L, states h_emb, layer_1..layer_L). The result is `<run_dir>/probe/probe.json`
(schema in `probe_run`) plus figures from `meshctl.analysis.probe_plots`.
"""

from __future__ import annotations

import json
import math
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshctl.errors import BadInput

SCHEMA = "meshctl.probe/1"
TOP_SINGULAR = 50


def update_magnitude(h_in: torch.Tensor, h_out: torch.Tensor) -> float:
    """2 ||h_out - h_in||_F / (||h_out||_F + ||h_in||_F) of two (seq, dim) matrices; 0 when both are 0."""
    h_in, h_out = h_in.double(), h_out.double()
    denom = float(torch.linalg.norm(h_out) + torch.linalg.norm(h_in))
    return 2.0 * float(torch.linalg.norm(h_out - h_in)) / denom if denom > 0 else 0.0


def rbf_gram(x: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """(n, n) RBF kernel over the rows of x (n, dim), bandwidth^2 = threshold^2 * median squared distance."""
    x = x.double()
    dots = x @ x.T
    sq_norms = dots.diagonal()
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * dots).clamp(min=0.0)
    median = float(sq_dist.median())
    if median <= 0:
        return torch.ones_like(sq_dist)
    return torch.exp(-sq_dist / (2.0 * threshold**2 * median))


def center_gram(k: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11^T / n."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def cka_from_grams(kc: torch.Tensor, lc: torch.Tensor) -> float:
    """CKA of two centred grams: <Kc, Lc>_F / (||Kc||_F ||Lc||_F); NaN when either is constant."""
    denom = float(torch.linalg.norm(kc) * torch.linalg.norm(lc))
    return float((kc * lc).sum()) / denom if denom > 0 else math.nan


def cka(x: torch.Tensor, y: torch.Tensor, threshold: float = 1.0) -> float:
    """RBF-kernel CKA between two representations (n, d1) and (n, d2) of the same n tokens."""
    return cka_from_grams(center_gram(rbf_gram(x, threshold)), center_gram(rbf_gram(y, threshold)))


def spectrum(h: torch.Tensor, top: int = TOP_SINGULAR) -> np.ndarray:
    """sigma_i / sigma_0 for the top `top` singular values of h (seq, dim); fewer when the rank bound is lower."""
    s = torch.linalg.svdvals(h.double())[:top]
    return (s / s[0]).cpu().numpy() if float(s[0]) > 0 else np.zeros(len(s))


def stages(model: torch.nn.Module, n_loop: int | None) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The update-magnitude stages as (name, input state, output state) and the CKA/spectrum states,
    in the names the model's forward records."""
    if not hasattr(model, "recurrence"):
        layers = [f"layer_{i + 1}" for i in range(len(model.layers))]
        ins = ["h_emb", *layers[:-1]]
        return [(name, i, name) for name, i in zip(layers, ins)], ["h_emb", *layers]
    k = model.spec.n_loop if n_loop is None else n_loop
    stage_list = [("prelude", "h_emb", "prelude_out")]
    stage_list += [(f"core_{t}", f"h{t - 1}", f"core_out{t}") for t in range(1, k + 1)]
    stage_list.append(("coda", f"h{k}", "h_out"))
    return stage_list, ["h_emb", *[f"h{t}" for t in range(k + 1)], "h_out"]


def probe_windows(data_dir: str | Path, split: str, samples: int, seq_len: int) -> torch.Tensor:
    """`samples` windows of seq_len tokens spread evenly over the split (they overlap when it is short)."""
    from meshctl.data.manifest import load_manifest

    manifest = load_manifest(data_dir)
    tokens = manifest.dataset(data_dir, split).tokens  # its shards and entries, for imported data too
    if len(tokens) < seq_len:
        raise BadInput(f"{data_dir} split {split!r} has {len(tokens)} tokens, fewer than --seq-len {seq_len}; lower it")
    starts = np.linspace(0, len(tokens) - seq_len, samples).round().astype(np.int64)
    return torch.from_numpy(np.stack([np.asarray(tokens[s : s + seq_len], dtype=np.int64) for s in starts]))


@torch.no_grad()
def probe_model(model: torch.nn.Module, windows: torch.Tensor, n_loop: int | None = None, batch_size: int = 8,
                threshold: float = 1.0) -> dict[str, Any]:
    """The three probes over `windows` (samples, seq): mean and std over samples."""
    stage_list, state_names = stages(model, n_loop)
    device = next(model.parameters()).device
    updates: dict[str, list[float]] = {name: [] for name, _, _ in stage_list}
    pairs: list[np.ndarray] = []
    spectra: dict[str, list[np.ndarray]] = {name: [] for name in state_names}
    for b in range(0, len(windows), batch_size):
        states: dict[str, torch.Tensor] = {}
        loop_kw = {"n_loop": n_loop} if hasattr(model, "recurrence") else {}
        model(windows[b : b + batch_size].to(device), record=lambda name, h: states.__setitem__(name, h), **loop_kw)
        for i in range(states["h_emb"].shape[0]):
            for name, src, dst in stage_list:
                updates[name].append(update_magnitude(states[src][i], states[dst][i]))
            grams = [center_gram(rbf_gram(states[s][i], threshold)) for s in state_names]
            n = len(grams)
            matrix = np.ones((n, n))
            for r in range(n):
                for c in range(r + 1, n):
                    matrix[r, c] = matrix[c, r] = cka_from_grams(grams[r], grams[c])
            pairs.append(matrix)
            for s in state_names:
                spectra[s].append(spectrum(states[s][i]))
    stack = np.stack(pairs)
    with warnings.catch_warnings():  # an all-NaN entry (a constant state) stays NaN without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        cka_mean, cka_std = np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)
    return {
        "stages": [name for name, _, _ in stage_list],
        "stage_io": {name: [src, dst] for name, src, dst in stage_list},
        "update_magnitude": {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in updates.items()},
        "states": state_names,
        "cka": {"mean": _json_matrix(cka_mean), "std": _json_matrix(cka_std),
                "kernel": "rbf", "bandwidth": f"median heuristic, threshold {threshold}: "
                "exp(-d^2 / (2 t^2 median(d^2))) per matrix (Kornblith et al. 2019 gram_rbf)"},
        "spectrum": {k: {"mean": np.mean(np.stack(v), axis=0).tolist(), "std": np.std(np.stack(v), axis=0).tolist()}
                     for k, v in spectra.items()},
    }


def _json_matrix(m: np.ndarray) -> list[list[float | None]]:
    """NaN (a constant state, e.g. an empty prelude's zero update) becomes null: JSON has no NaN."""
    return [[None if math.isnan(v) else float(v) for v in row] for row in m]


def probe_run(run_dir: str | Path, samples: int = 500, n_loop: int | None = None, seq_len: int | None = None,
              split: str = "validation", batch_size: int = 8, device: str = "cpu", plots: bool = True) -> dict[str, Any]:
    """Probe a trained run and write `<run_dir>/probe/probe.json` (+ PNGs). The document:

        schema "meshctl.probe/1"; run_id; checkpoint_step; family; structure; recurrence;
        n_loop (depth probed) and trained_n_loop (null for vanilla);
        data {path, split, samples, seq_len};
        stages [names]: prelude, core_1..core_K, coda (vanilla: layer_1..layer_L);
        stage_io {stage: [input state, output state]};
        update_magnitude {stage: {mean, std}};
        states [names]: h_emb, h0..hK, h_out (vanilla: h_emb, layer_1..layer_L);
        cka {mean: [[...]], std: [[...]] (states x states), kernel: "rbf", bandwidth: text};
        spectrum {state: {mean: [sigma_i / sigma_0, i < 50], std: [...]}};
        figures [file names in probe/]; created (UTC ISO-8601).

    Files whose depth differs from the trained one are named probe.loops<K>.json (and figures likewise)."""
    from meshctl.analysis.loading import load_run
    from meshctl.train.rundir import write_json_atomic

    if samples < 1:
        raise BadInput(f"--samples {samples}: must be >= 1")
    run_dir = Path(run_dir)
    loaded = load_run(run_dir, device=device)
    spec = loaded.model.spec
    recursive = hasattr(loaded.model, "recurrence")
    if n_loop is not None and not recursive:
        raise BadInput(f"--loops {n_loop}: {run_dir.name} is a vanilla model; test-time depth applies to recursive models")
    if n_loop is not None and (n_loop < 1 or (not spec.shares_core and n_loop != spec.n_loop)):
        raise BadInput(f"--loops {n_loop}: must be >= 1, and equal {spec.n_loop} for a {spec.family} model")
    seq_len = _seq_len(loaded.spec, seq_len)
    if seq_len > spec.block_size:
        raise BadInput(f"--seq-len {seq_len}: exceeds the model's block_size {spec.block_size}")
    windows = probe_windows(loaded.spec.data.path, split, samples, seq_len)
    result = probe_model(loaded.model, windows, n_loop=n_loop, batch_size=batch_size)
    suffix = _suffix(recursive, spec.n_loop, n_loop)
    out_dir = run_dir / "probe"
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "schema": SCHEMA,
        "run_id": run_dir.name,
        "checkpoint_step": loaded.step,
        "family": spec.family,
        "structure": spec.structure,
        "recurrence": spec.recurrence if recursive else None,
        "n_loop": (n_loop or spec.n_loop) if recursive else None,
        "trained_n_loop": spec.n_loop if recursive else None,
        "data": {"path": loaded.spec.data.path, "split": split, "samples": samples, "seq_len": seq_len},
        **result,
        "figures": [],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if plots:
        from meshctl.analysis.probe_plots import write_figures

        document["figures"] = [p.name for p in write_figures(document, out_dir, suffix)]
    write_json_atomic(out_dir / f"probe{suffix}.json", document)
    return document


def _seq_len(run_spec: Any, seq_len: int | None) -> int:
    return seq_len or run_spec.data.seq_len or run_spec.model_spec().block_size


def _suffix(recursive: bool, trained_n_loop: int, n_loop: int | None) -> str:
    """'' at the trained depth, '.loops<K>' at another one: probe files of both depths live side by side."""
    return f".loops{n_loop}" if recursive and n_loop is not None and n_loop != trained_n_loop else ""


def cached_probe(run_dir: str | Path, samples: int = 500, n_loop: int | None = None, seq_len: int | None = None,
                 split: str = "validation") -> dict[str, Any] | None:
    """The run's probe document when one was made with these settings from its current checkpoint, else None
    (a checkpoint newer than the file means the run trained on since)."""
    from meshctl.analysis.loading import checkpoint_path, read_spec

    run_dir = Path(run_dir)
    spec = read_spec(run_dir)
    model = spec.model_spec()
    path = run_dir / "probe" / f"probe{_suffix(model.family != 'vanilla', model.n_loop, n_loop)}.json"
    try:
        doc = json.loads(path.read_text())
        fresh = path.stat().st_mtime >= checkpoint_path(run_dir).stat().st_mtime
    except (OSError, ValueError, BadInput):
        return None
    want = {"path": spec.data.path, "split": split, "samples": samples, "seq_len": _seq_len(spec, seq_len)}
    return doc if fresh and doc.get("schema") == SCHEMA and doc.get("data") == want else None

"""Figures of probe results in the style of the MeSH paper's Figs. 3-5 (matplotlib, Agg backend).

Each function takes one or more labelled probe documents (`probe.json`), so the same code draws one
run's figures and a side-by-side comparison of variants (base / +residual / +anchor / +mesh):
- `plot_update_magnitude`: bars of the relative update magnitude per stage, mean +- std, runs side by side (Fig. 3);
- `plot_cka`: one annotated CKA heatmap per run over h_emb, h0..hK, h_out, one colour scale 0..1 (Fig. 4);
- `plot_spectrum`: sigma_i / sigma_0 per state on one log axis, std shaded; colour = state, line style = run (Fig. 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Labelled = Sequence[tuple[str, dict[str, Any]]]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(doc: dict[str, Any]) -> str:
    rec = doc.get("recurrence")
    return f"{doc.get('structure')} {rec}" if rec else f"vanilla {doc.get('structure')}"


def plot_update_magnitude(docs: Labelled, path: Path, title: str = "") -> Path:
    plt = _pyplot()
    stages = list(docs[0][1]["stages"])
    width = 0.8 / len(docs)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(stages) + 1), 3.2))
    x = np.arange(len(stages))
    for k, (label, doc) in enumerate(docs):
        um = doc["update_magnitude"]
        mean = [um.get(s, {}).get("mean", np.nan) for s in stages]
        std = [um.get(s, {}).get("std", 0.0) for s in stages]
        ax.bar(x + (k - (len(docs) - 1) / 2) * width, mean, width, yerr=std, capsize=3, label=label)
    ax.set_xticks(x, [s.replace("_", " ") for s in stages])
    ax.set_ylabel("relative update magnitude")
    ax.set_title(title or "State update per stage" + ("" if len(docs) > 1 else f": {docs[0][0]}"), fontsize=10)
    if len(docs) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_cka(docs: Labelled, path: Path, title: str = "") -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(docs), figsize=(3.6 * len(docs) + 0.6, 3.4), squeeze=False)
    image = None
    for ax, (label, doc) in zip(axes[0], docs):
        names = doc["states"]
        m = np.array([[np.nan if v is None else v for v in row] for row in doc["cka"]["mean"]], dtype=float)
        image = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
        ticks = [n.replace("h_emb", "emb").replace("h_out", "out") for n in names]
        ax.set_xticks(range(len(names)), ticks, rotation=45, fontsize=8)
        ax.set_yticks(range(len(names)), ticks, fontsize=8)
        if len(names) <= 12:
            for r in range(len(names)):
                for c in range(len(names)):
                    if not np.isnan(m[r, c]):
                        ax.text(c, r, f"{m[r, c]:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if m[r, c] < 0.6 else "black")
        ax.set_title(label, fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="CKA (RBF)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_spectrum(docs: Labelled, path: Path, title: str = "") -> Path:
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    styles = ["-", "--", ":", "-."]
    states = list(dict.fromkeys(name for _, doc in docs for name in doc["states"]))
    colours = {name: f"C{i % 10}" for i, name in enumerate(states)}
    for k, (label, doc) in enumerate(docs):
        for name in doc["states"]:
            mean = np.asarray(doc["spectrum"][name]["mean"])
            std = np.asarray(doc["spectrum"][name]["std"])
            i = np.arange(len(mean))
            ax.plot(i, mean, styles[k % len(styles)], color=colours[name], lw=1.2)
            ax.fill_between(i, np.clip(mean - std, 1e-6, None), mean + std, color=colours[name],
                            alpha=0.15 / len(docs))
    ax.set_yscale("log")
    low, _ = ax.get_ylim()
    ax.set_ylim(bottom=max(low, 1e-4))  # rank-deficient states (repeated tokens) fall to ~1e-16
    ax.set_xlabel("singular value index i")
    ax.set_ylabel(r"$\sigma_i / \sigma_0$")
    ax.set_title(title or ("Singular-value spectra" if len(docs) > 1 else docs[0][0]), fontsize=10)
    handles = [Line2D([], [], color=colours[n], label=n) for n in states]
    if len(docs) > 1:  # a second key: which line style is which run
        handles += [Line2D([], [], color="0.3", ls=styles[k % len(styles)], label=label)
                    for k, (label, _) in enumerate(docs)]
    ax.legend(handles=handles, fontsize=7, ncol=2 if len(handles) > 6 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_figures(doc: dict[str, Any] | Labelled, out_dir: str | Path, suffix: str = "", prefix: str = "",
                  title: str = "") -> list[Path]:
    """update_magnitude / cka / spectrum PNGs for one probe document or several labelled ones."""
    docs = [(_label(doc), doc)] if isinstance(doc, dict) else list(doc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_update_magnitude(docs, out / f"{prefix}update_magnitude{suffix}.png", title),
        plot_cka(docs, out / f"{prefix}cka{suffix}.png", title),
        plot_spectrum(docs, out / f"{prefix}spectrum{suffix}.png", title),
    ]

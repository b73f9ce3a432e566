"""The model card (README.md) of an exported run, generated from its run directory: structure,
recurrence, parameter counts, tokens trained, final validation loss, and how to load it."""

from __future__ import annotations

from typing import Any

from meshctl.models import count_params
from meshctl.specs.run import RunSpec

def _progress(final: dict[str, Any] | None, metrics: list[dict[str, Any]]) -> tuple[int | None, int | None, dict | None]:
    """(step, tokens, validation record) at the end of training, or the last recorded ones."""
    if final is not None:
        return final.get("step"), final.get("tokens"), {"eval_set": final.get("eval_set"), "loss": final.get("val_loss"),
                                                        "perplexity": final.get("perplexity")}
    last = metrics[-1] if metrics else {}
    with_val = [r for r in metrics if r.get("val")]
    val = None
    if with_val:
        sets = with_val[-1]["val"]
        name = "validation" if "validation" in sets else next(iter(sets))
        val = {"eval_set": name, **sets[name], "step": with_val[-1].get("step")}
    return last.get("step"), last.get("tokens"), val


def model_card(run_id: str, spec: RunSpec, final: dict[str, Any] | None, metrics: list[dict[str, Any]],
               remote_code: bool) -> str:
    model = spec.model_spec()
    counts = count_params(model)
    step, tokens, val = _progress(final, metrics)
    loss = "not recorded" if not val or val.get("loss") is None else (
        f"{val['loss']:.4f} nats/token (perplexity {val['perplexity']:.2f}) on `{val['eval_set']}`"
        + ("" if final is not None else f", at step {val.get('step')}; the run has not completed"))
    rows = [
        ("family", f"`{model.family}`"),
        ("structure", f"`{model.structure}`" + (f" (prelude {model.n_prelude}, core {model.n_core} x {model.n_loop} loops, "
                                                 f"coda {model.n_coda})" if model.family != "vanilla" else " layers")),
        ("recurrence", "none (vanilla)" if model.family == "vanilla" else f"`{model.recurrence}`"),
        ("width", f"d = {model.n_embd}, {model.n_head} heads, context {model.block_size}"),
        ("parameters", f"{counts.total:,} stored ({counts.non_embedding:,} non-embedding, {counts.embedding:,} embedding)"),
        ("unrolled non-embedding", f"{counts.unrolled_non_embedding:,} (a shared core counted once per loop)"),
        ("recurrence parameters", f"{counts.recurrence:,}"),
        ("tokens trained", "not recorded" if tokens is None else f"{tokens:,} ({step:,} steps)"),
        ("final validation loss", loss),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if remote_code:
        load = ("model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)\n"
                f"deeper = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, n_loop={model.n_loop + 1})"
                "  # test-time depth" if model.shares_core else
                "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)")
        code = ("The modeling code (`modeling_meshctl.py` and the files next to it) is meshctl's own model code; "
                "it needs torch and transformers only. `generate()` keeps one KV-cache entry per layer "
                "application (a core looped K times has K).")
    else:
        load = "model = AutoModelForCausalLM.from_pretrained(path)  # GPTNeoXForCausalLM"
        code = "A vanilla GPT-NeoX (Pythia-style) model: `GPTNeoXForCausalLM`, no remote code."
    tags = ["meshctl", "gpt-neox"] + ([] if model.family == "vanilla" else ["recursive-transformer"]) + (
        ["mesh"] if model.recurrence == "mesh" and model.family != "vanilla" else [])
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [{", ".join(tags)}]
---

# meshctl run {run_id}

Trained with meshctl, scaling studies of recursive transformers and MeSH ([arXiv 2510.07739](https://arxiv.org/abs/2510.07739));
spec hash `{spec.short_hash()}`, seed {spec.seed}.

| | |
|---|---|
{table}

{code}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "."  # this directory, or its hub repo
tokenizer = AutoTokenizer.from_pretrained(path)
{load}
ids = tokenizer("In the beginning", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))
```
"""

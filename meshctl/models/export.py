"""Export a vanilla model to a Hugging Face GPT-NeoX directory (config.json + model.safetensors).

Layer parameter names already match `transformers`' GPTNeoXForCausalLM; only the prefixes change. The
sqrt(d) embedding scale has no counterpart in GPT-NeoX, so it is folded into the exported embedding
table, which leaves the logits unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from meshctl.models.families import VanillaLM


def hf_config(model: VanillaLM) -> dict:
    spec = model.spec
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": spec.padded_vocab_size,
        "hidden_size": spec.n_embd,
        "num_hidden_layers": spec.n_layer,
        "num_attention_heads": spec.n_head,
        "intermediate_size": spec.ffn_size,
        "hidden_act": "gelu",
        "rotary_pct": spec.rotary_pct,
        "rotary_emb_base": spec.rotary_base,
        "max_position_embeddings": spec.block_size,
        "layer_norm_eps": spec.layer_norm_eps,
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    }


def hf_state_dict(model: VanillaLM) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("embed_out."):
            out[name] = tensor
        elif name == "embed_in.weight":
            out["gpt_neox.embed_in.weight"] = tensor * model.embed_scale
        else:
            out[f"gpt_neox.{name}"] = tensor
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def export_hf(model: torch.nn.Module, out_dir: str | Path) -> Path:
    if not isinstance(model, VanillaLM):
        family = getattr(getattr(model, "spec", None), "family", type(model).__name__)
        raise ValueError(
            f"only vanilla models export to GPT-NeoX: a {family} model shares or routes layers, "
            "which GPTNeoXForCausalLM cannot express"
        )
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(model), indent=2) + "\n")
    (out / "meshctl_spec.json").write_text(model.spec.model_dump_json(indent=2) + "\n")
    return out

"""Export to Hugging Face: vanilla models as GPT-NeoX, every other family as `trust_remote_code` code.

Vanilla: layer parameter names already match `transformers`' GPTNeoXForCausalLM; only the prefixes
change. The sqrt(d) embedding scale has no counterpart in GPT-NeoX, so it is folded into the exported
embedding table, which leaves the logits unchanged.

Recursive, MeSH and vanilla_mesh: meshctl's own model files (`REMOTE_CODE`: torch only, relative imports
only) are copied next to the weights with `configuration_meshctl.py` and `modeling_meshctl.py`, so
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` runs the forward meshctl trained,
not a second implementation of it. The state dict is meshctl's, under `model.`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from meshctl.models.families import LanguageModel, VanillaLM

# Shipped verbatim into exported directories; none of them may import meshctl (tests/export checks).
REMOTE_CODE = ("block.py", "cache.py", "loss.py", "recurrence.py", "families.py",
               "configuration_meshctl.py", "modeling_meshctl.py")


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
    return _fp32(out)


def _fp32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}


def _save(state: dict[str, torch.Tensor], config: dict, model: LanguageModel, out: Path) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "meshctl_spec.json").write_text(model.spec.model_dump_json(indent=2) + "\n")
    return out


def export_hf(model: torch.nn.Module, out_dir: str | Path) -> Path:
    if not isinstance(model, VanillaLM):
        family = getattr(getattr(model, "spec", None), "family", type(model).__name__)
        raise ValueError(
            f"only vanilla models export to GPT-NeoX: a {family} model shares or routes layers, "
            "which GPTNeoXForCausalLM cannot express; use export_model for a trust_remote_code directory"
        )
    return _save(hf_state_dict(model), hf_config(model), model, Path(out_dir))


def remote_code_config(model: LanguageModel) -> dict:
    """config.json of a `trust_remote_code` export (`configuration_meshctl.MeshctlConfig`), written
    without transformers: the spec with the derived shapes the modules are built from."""
    spec = model.spec
    derived = ("head_size", "rotary_dims", "ffn_size", "padded_vocab_size", "shares_core", "n_unrolled", "slots",
               "base_std", "structure")
    meshctl_spec = {**spec.model_dump(mode="json"), **{name: getattr(spec, name) for name in derived}}
    return {
        "architectures": ["MeshctlForCausalLM"],
        "model_type": "meshctl",
        "auto_map": {"AutoConfig": "configuration_meshctl.MeshctlConfig",
                     "AutoModelForCausalLM": "modeling_meshctl.MeshctlForCausalLM"},
        "meshctl_spec": meshctl_spec,
        "n_loop": spec.n_loop,
        "vocab_size": spec.padded_vocab_size,
        "hidden_size": spec.n_embd,
        "num_attention_heads": spec.n_head,
        "max_position_embeddings": spec.block_size,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    }


def export_remote_code(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """A recursive, MeSH or vanilla_mesh model as a `trust_remote_code` directory; returns it."""
    if not isinstance(model, LanguageModel) or isinstance(model, VanillaLM):
        raise ValueError("export_remote_code takes a recursive or vanilla_mesh meshctl model; "
                         "a vanilla one exports as GPT-NeoX (export_hf)")
    out = _save(_fp32({f"model.{k}": v for k, v in model.state_dict().items()}), remote_code_config(model), model,
                Path(out_dir))
    source = Path(__file__).parent
    for name in REMOTE_CODE:
        shutil.copyfile(source / name, out / name)
    return out


def export_model(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """Any family: vanilla as GPT-NeoX (`export_hf`), the others as `trust_remote_code` (`export_remote_code`)."""
    return export_hf(model, out_dir) if isinstance(model, VanillaLM) else export_remote_code(model, out_dir)

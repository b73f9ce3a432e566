"""`AutoModelForCausalLM` for exported recursive, MeSH and vanilla_mesh models (`trust_remote_code`).

The wrapper adds nothing to the model: `self.model` is meshctl's own `RecursiveLM` from `families.py`,
shipped next to this file with `block.py`, `cache.py`, `recurrence.py` and `loss.py`, so the exported
model runs the forward meshctl trains and samples with. `generate()` hands it a `DynamicCache` whose
entries are layer applications (one per loop of a core layer; `config.num_hidden_layers` counts them at
the config's `n_loop`) and, for batches of left-padded prompts, the attention mask.
Depends on torch and transformers only.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_meshctl import MeshctlConfig
from .families import LanguageModel, module_class


CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class MeshctlForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MeshctlConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def __init__(self, config: MeshctlConfig) -> None:
        super().__init__(config)
        spec = SimpleNamespace(**config.meshctl_spec)  # the trained spec: per-iteration parameters fit the weights
        self.model = module_class(spec)(spec)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        if isinstance(module, LanguageModel):  # meshctl's init; weights loaded afterwards replace it
            module.reset_parameters()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed_in

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.embed_out

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Any = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, n_loop: int | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        """Logits (batch, seq, padded vocab) at depth `n_loop` (default: config.n_loop); `labels` as in
        transformers (shifted inside, -100 ignored)."""
        if input_ids is None:
            raise ValueError("MeshctlForCausalLM needs input_ids (inputs_embeds are not supported)")
        cache = cache if cache is not None else kwargs.get("past_key_values")  # its name before transformers 5.x
        if use_cache is False:
            cache = None
        elif use_cache and cache is None:
            cache = DynamicCache()
        loops = {"n_loop": n_loop if n_loop is not None else self.config.n_loop} if hasattr(self.model, "recurrence") else {}
        logits = self.model(input_ids, cache=cache, attention_mask=attention_mask, position_ids=position_ids, **loops)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache})


__all__ = ["MeshctlForCausalLM"]

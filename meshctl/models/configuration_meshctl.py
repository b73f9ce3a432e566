"""The `transformers` config of an exported recursive, MeSH or vanilla_mesh model (`trust_remote_code`).

`meshctl_spec` is the trained model's `meshctl.models.ModelSpec` with its derived shapes, as meshctl
computed them at export: it builds the modules, so the weights always fit. `n_loop` is the test-time
depth, the one field meant to be changed (`from_pretrained(dir, trust_remote_code=True, n_loop=4)`);
it starts at the trained depth. Torch-free and meshctl-free: this file ships in exported directories.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class MeshctlConfig(PretrainedConfig):
    model_type = "meshctl"

    def __init__(self, meshctl_spec: dict[str, Any] | None = None, n_loop: int | None = None, **kwargs: Any) -> None:
        self.meshctl_spec = dict(meshctl_spec or {})
        self.n_loop = n_loop if n_loop is not None else self.meshctl_spec.get("n_loop")
        spec = self.meshctl_spec
        kwargs.setdefault("vocab_size", spec.get("padded_vocab_size"))
        kwargs.setdefault("hidden_size", spec.get("n_embd"))
        kwargs.setdefault("num_attention_heads", spec.get("n_head"))
        kwargs.setdefault("max_position_embeddings", spec.get("block_size"))
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.pop("num_hidden_layers", None)  # derived from n_loop below, never stored
        super().__init__(**kwargs)

    @property
    def num_hidden_layers(self) -> int:
        """Layer applications per forward at depth n_loop: the entries a KV cache needs."""
        spec = self.meshctl_spec
        if not spec:
            return 0
        return spec["n_prelude"] + spec["n_core"] * self.n_loop + spec["n_coda"]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("num_hidden_layers", None)
        return out

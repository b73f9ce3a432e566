"""The LightningModule: next-token cross-entropy, AdamW with decoupled weight decay on matmul weights only,
cosine schedule with linear warmup to a floor (Pythia / MeSH paper App. B: 1% warmup, 10% floor).

Gradient norm and clipping are done here (`configure_gradient_clipping`), so the norm that is logged is
the one clipping used, and FSDP clips through its own sharded `clip_grad_norm_`.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from meshctl.models import build
from meshctl.models.block import Block
from meshctl.specs.run import RunSpec


def warmup_steps(max_steps: int, warmup: float) -> int:
    """Pythia: warmup 0.01 of 143,000 steps = 1430."""
    return round(warmup * max_steps)


def lr_at(step: int, max_steps: int, lr: float, warmup: float, min_lr_ratio: float) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup from lr/W to lr over W steps, then a
    cosine from lr down to lr * min_lr_ratio, reached at `max_steps` and held after it."""
    w = warmup_steps(max_steps, warmup)
    if step < w:
        return lr * (step + 1) / w
    min_lr = lr * min_lr_ratio
    progress = min((step - w) / max(max_steps - w, 1), 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict[str, Any]]:
    """Two AdamW groups: decay on Linear weights (and the input embedding if `decay_embeddings`, as OLMo's
    flag of that name); none on LayerNorm weights, biases, embeddings and scalar mixing coefficients.
    The LM head (`embed_out`) is a Linear and decays. Shared weights appear once."""
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(prefix=module_name, recurse=False):
            if not param.requires_grad:
                continue
            is_matmul = isinstance(module, nn.Linear) and name.endswith("weight")
            is_embedding = isinstance(module, nn.Embedding)
            (decay if is_matmul or (is_embedding and decay_embeddings) else no_decay).append((name, param))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per token in fp32: logits (batch, seq, vocab), targets (batch, seq) -> (batch, seq)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def compile_blocks(model: nn.Module) -> int:
    """torch.compile every `Block` in place (fullgraph); the recursion loop stays eager. Returns the count."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile(fullgraph=True)
    return len(blocks)


class LMModule(L.LightningModule):
    """A meshctl model trained on windows of seq_len + 1 tokens: input = [:-1], target = [1:]."""

    def __init__(self, spec: RunSpec) -> None:
        super().__init__()
        if not spec.is_resolved:
            spec = spec.resolved()
        self.run_spec = spec
        self.model_spec = spec.model_spec()
        self.model = build(self.model_spec, seed=spec.seed)
        if spec.train.compile:
            compile_blocks(self.model)
        # Running sums between metrics records; saved in checkpoints so a resumed run logs the same values.
        self.loss_sum: torch.Tensor | float = 0.0  # a device tensor while training: no sync per step
        self.loss_count = 0
        self.last_lr = float("nan")
        self.last_grad_norm: torch.Tensor | None = None

    def configure_model(self) -> None:
        """Under `strategy: fsdp` (Lightning's ModelParallelStrategy), shard the model with FSDP2 over the
        data-parallel mesh (`meshctl.train.sharding`); a no-op for every other strategy."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        from meshctl.train.sharding import is_sharded, shard_model

        if isinstance(self.trainer.strategy, ModelParallelStrategy) and not is_sharded(self.model):
            shard_model(self.model, self.device_mesh["data_parallel"])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)  # (batch, seq, padded_vocab)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # the model's fused head + cross-entropy: the mean of token_nll, without logits kept for backward
        loss = self.model(batch[:, :-1], targets=batch[:, 1:])
        # The step loss is the mean over its accumulation micro-batches (equal token counts).
        self.loss_sum = self.loss_sum + loss.detach().double()
        self.loss_count += 1
        if self.trainer.progress_bar_callback is not None:
            self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.last_lr = optimizer.param_groups[0]["lr"]

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        max_norm = self.run_spec.train.grad_clip or float("inf")
        grads = [p for p in self.parameters() if p.grad is not None]
        # under FSDP2 the gradients are sharded DTensors: the norm is a DTensor reduced over the shards
        if math.isinf(max_norm):
            norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
        else:
            norm = torch.nn.utils.clip_grad_norm_(grads, max_norm)
        self.last_grad_norm = norm.full_tensor().detach() if hasattr(norm, "full_tensor") else norm.detach()

    def take_train_loss(self) -> float | None:
        """Mean train loss since the last call (all ranks), then reset."""
        total = torch.tensor([float(self.loss_sum), float(self.loss_count)], dtype=torch.float64, device=self.device)
        total = self.trainer.strategy.reduce(total, reduce_op="sum") if self.trainer.world_size > 1 else total
        self.loss_sum, self.loss_count = 0.0, 0
        return float(total[0] / total[1]) if total[1] > 0 else None

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.run_spec.train
        groups = param_groups(self.model, t.weight_decay, t.decay_embeddings)
        # fused AdamW: one kernel per step on CUDA, and ~5x faster than the for-loop version on CPU at 160m
        fused = self.device.type in ("cuda", "cpu")
        adamw = {"lr": t.lr, "betas": t.betas, "eps": t.eps, "fused": fused}
        if t.strategy == "ddp_zero1":  # AdamW states sharded over ranks (ZeRO stage 1)
            from torch.distributed.optim import ZeroRedundancyOptimizer

            optimizer: torch.optim.Optimizer = ZeroRedundancyOptimizer(
                groups, optimizer_class=torch.optim.AdamW, **adamw)
        else:
            optimizer = torch.optim.AdamW(groups, **adamw)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_at(step, t.max_steps, 1.0, t.warmup, t.min_lr_ratio)  # type: ignore[arg-type]
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["meshctl"] = {"loss_sum": float(self.loss_sum), "loss_count": self.loss_count}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("meshctl", {})
        self.loss_sum = state.get("loss_sum", 0.0)
        self.loss_count = state.get("loss_count", 0)

    @torch.no_grad()
    def evaluate(self, loaders: dict[str, Any]) -> dict[str, dict[str, float]]:
        """Mean token NLL and perplexity = exp(mean NLL) on each eval set; sums reduced over ranks.

        Loaders yield (windows, weight) with weight 0 for padding batches that keep ranks in step."""
        was_training = self.training
        self.eval()
        model = self.trainer.strategy.model if self._trainer is not None else self
        results: dict[str, dict[str, float]] = {}
        for name, loader in loaders.items():
            total = torch.zeros(2, dtype=torch.float64, device=self.device)
            for windows, weight in loader:
                windows = windows.to(self.device)
                with self.trainer.precision_plugin.forward_context():
                    logits = model(windows[:, :-1])
                nll = token_nll(logits, windows[:, 1:])  # (batch, seq)
                weight = weight.to(self.device, torch.float64)  # (batch,) 0 on padding
                total[0] += (nll.double().sum(dim=1) * weight).sum()
                total[1] += (weight * nll.shape[1]).sum()
            if self.trainer.world_size > 1:
                total = self.trainer.strategy.reduce(total, reduce_op="sum")
            loss = float(total[0] / total[1]) if total[1] > 0 else float("nan")
            results[name] = {"loss": loss, "perplexity": math.exp(loss), "tokens": int(total[1])}
        self.train(was_training)
        return results

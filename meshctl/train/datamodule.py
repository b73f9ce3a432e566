"""Data for one run: training windows in a deterministic, resumable order; fixed eval windows.

The order is a function of the optimizer step: global batch k is the windows
`perm(epoch)[j * G : (j + 1) * G]` with `epoch, j = divmod(k, steps_per_epoch)`, `perm` a bijection
seeded by (seed, epoch) (identity when `shuffle` is off) and G the global batch; rank r of W reads the
r-th of W equal slices of it, in micro-batches. `perm` is evaluated only at the positions a step reads
(`meshctl.data.permutation`), so no array as long as the data (146M samples for the Pile) is ever built.
A checkpoint records the step it was taken at (with epoch and position for people) and the order's name,
so a resumed run reads exactly the batches an uninterrupted one would.
Lightning sees a single epoch as long as the whole run, so its own epoch logic never reorders anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from meshctl.data.manifest import load_manifest
from meshctl.data.permutation import FeistelPermutation
from meshctl.data.windows import TokenWindows
from meshctl.errors import BadInput, MeshctlError
from meshctl.specs.run import RunSpec

ORDER = "feistel-1"  # the shuffle's name in checkpoints: another order must not resume one of these


def open_windows(path: str, split: str, seq_len: int, mode: str) -> TokenWindows:
    """Windows of one split of a prepared or imported directory, in file order (the sampler shuffles)."""
    return TokenWindows(load_manifest(path).dataset(path, split), seq_len, mode=mode, seed=None)  # type: ignore[arg-type]


class StepSampler(Sampler[int]):
    """Window indices for one rank, from optimizer step `start_step` to `max_steps` (see module docstring)."""

    def __init__(
        self, num_windows: int, global_batch: int, max_steps: int, seed: int, shuffle: bool,
        rank: int = 0, world_size: int = 1, start_step: int = 0,
    ) -> None:
        if num_windows < global_batch:
            raise BadInput(
                f"data: {num_windows} training windows cannot fill one global batch of {global_batch}; "
                "use more data, a shorter data.seq_len or a smaller train.global_batch"
            )
        self.num_windows, self.global_batch, self.max_steps = num_windows, global_batch, max_steps
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.per_rank = global_batch // world_size
        self.steps_per_epoch = num_windows // global_batch  # the remainder of each epoch is dropped
        self.start_step = start_step

    def __len__(self) -> int:
        # Constant over resumes: Lightning counts batches of the whole run, restored ones included.
        return self.max_steps * self.per_rank

    def indices(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        """Positions [lo, hi) of epoch `epoch`'s order: a few bytes per index read, none per window."""
        positions = np.arange(lo, hi, dtype=np.int64)
        return FeistelPermutation(self.num_windows, [self.seed, epoch])(positions) if self.shuffle else positions

    def position(self, step: int) -> tuple[int, int]:
        """(data epoch, windows already read in it) before optimizer step `step`."""
        epoch, j = divmod(step, self.steps_per_epoch)
        return epoch, j * self.global_batch

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.max_steps):
            epoch, offset = self.position(step)
            lo = offset + self.rank * self.per_rank
            yield from self.indices(epoch, lo, lo + self.per_rank).tolist()


class EvalWindows(Dataset):
    """The first `count` windows of an eval split, this rank's share (every W-th), padded so all ranks run
    the same number of batches; items are (window, weight) with weight 0 on padding."""

    def __init__(self, windows: TokenWindows, count: int, rank: int, world_size: int, micro_batch: int) -> None:
        self.windows = windows
        count = min(count, len(windows))
        self.indices = list(range(rank, count, world_size))
        per_rank = -(-count // world_size)
        padded = -(-per_rank // micro_batch) * micro_batch
        self.weights = [1.0] * len(self.indices) + [0.0] * (padded - len(self.indices))
        self.indices += [0] * (padded - len(self.indices))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float]:
        return self.windows[self.indices[i]], self.weights[i]


class LMDataModule(L.LightningDataModule):
    def __init__(self, spec: RunSpec) -> None:
        super().__init__()
        self.spec = spec
        self.start_step = 0
        self.train_windows: TokenWindows | None = None
        self.eval_windows: dict[str, TokenWindows] = {}
        self.sampler: StepSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        d = self.spec.data
        if self.train_windows is None:
            self.train_windows = open_windows(d.path, d.split, d.seq_len, d.mode)  # type: ignore[arg-type]
            self.eval_windows = {
                name: open_windows(e.path, e.split, d.seq_len, d.mode)  # type: ignore[arg-type]
                for name, e in (d.eval_sets or {}).items()
            }

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        t, rank_world = self.spec.train, self._rank()
        self.sampler = StepSampler(
            len(self.train_windows), t.global_batch, t.max_steps, self.spec.seed, self.spec.data.shuffled,  # type: ignore[arg-type]
            rank=rank_world[0], world_size=rank_world[1], start_step=self.start_step,
        )
        return self._loader(self.train_windows, self.sampler)

    def eval_dataloaders(self) -> dict[str, DataLoader]:
        self.setup()
        t = self.spec.train
        rank, world = self._rank()
        count = t.val_batches * t.micro_batch  # type: ignore[operator]
        return {
            name: self._loader(EvalWindows(w, count, rank, world, t.micro_batch))  # type: ignore[arg-type]
            for name, w in self.eval_windows.items()
        }

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        workers = self.spec.data.num_workers
        return DataLoader(
            dataset, batch_size=self.spec.train.micro_batch, sampler=sampler, shuffle=False, drop_last=False,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        )

    def state_dict(self) -> dict[str, Any]:
        step = self.trainer.global_step if self.trainer is not None else self.start_step
        state: dict[str, Any] = {"step": step, "seed": self.spec.seed, "global_batch": self.spec.train.global_batch}
        if self.sampler is not None:
            state["epoch"], state["position"] = self.sampler.position(step)
            state["num_windows"] = self.sampler.num_windows
        state["order"] = ORDER
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.setup()
        expected = {"seed": self.spec.seed, "global_batch": self.spec.train.global_batch,
                    "num_windows": len(self.train_windows)}  # type: ignore[arg-type]
        for key, value in expected.items():
            if key in state and state[key] != value:
                raise MeshctlError(
                    f"checkpoint data order differs from this run ({key} {state[key]} != {value}): "
                    "the training data changed since the checkpoint; restore it or start a new run directory"
                )
        if self.spec.data.shuffled and state.get("order") != ORDER:
            raise MeshctlError(
                "checkpoint was written by a meshctl that shuffled with a full permutation; resuming would read "
                "other batches: finish it with that version or start a new run directory"
            )
        self.start_step = int(state["step"])

"""The data order's defaults and its name in checkpoints: samples mode keeps Pythia's file order unless asked,
and a checkpoint from another shuffle is refused rather than resumed onto other batches."""

from __future__ import annotations

import pytest

from meshctl.errors import MeshctlError
from meshctl.specs.run import RunSpec
from meshctl.train.datamodule import ORDER, LMDataModule


@pytest.mark.parametrize(("mode", "shuffle", "expected"), [("packed", None, True), ("samples", None, False),
                                                          ("samples", True, True), ("packed", False, False)])
def test_shuffle_default_follows_mode(small_spec, mode, shuffle, expected):
    spec = small_spec()
    spec["data"].update({"mode": mode, **({} if shuffle is None else {"shuffle": shuffle})})
    resolved = RunSpec.model_validate(spec).resolved()
    assert resolved.data.shuffle is expected and resolved.is_resolved


def test_checkpoint_from_another_shuffle_is_refused(small_spec):
    module = LMDataModule(RunSpec.model_validate(small_spec()).resolved())
    state = {"step": 3, "seed": 0, "global_batch": 16}
    with pytest.raises(MeshctlError, match="shuffled with a full permutation"):
        module.load_state_dict(state)
    module.load_state_dict({**state, "order": ORDER})
    assert module.start_step == 3

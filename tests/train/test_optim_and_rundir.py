"""LR schedule values, weight-decay groups (and that AdamW really skips them), the run-dir readers,
the data order, and the peak-FLOPs table."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from meshctl.specs.run import parse_run_spec
from meshctl.train.callbacks import peak_flops
from meshctl.train.datamodule import StepSampler
from meshctl.train.hardware import PEAK_FLOPS, chip_of
from meshctl.train.module import LMModule, lr_at, param_groups, warmup_steps
from meshctl.train.rundir import RunDir, read_metrics


def test_lr_schedule_warmup_cosine_floor():
    lr, floor = 1e-3, 1e-4
    assert warmup_steps(143_000, 0.01) == 1430  # Pythia
    assert [lr_at(s, 100, lr, 0.1, 0.1) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert lr_at(10, 100, lr, 0.1, 0.1) == pytest.approx(lr)  # peak right after warmup
    assert lr_at(55, 100, lr, 0.1, 0.1) == pytest.approx((lr + floor) / 2)  # half way down the cosine
    assert lr_at(100, 100, lr, 0.1, 0.1) == pytest.approx(floor)
    assert lr_at(500, 100, lr, 0.1, 0.1) == pytest.approx(floor)  # held at the floor
    values = [lr_at(s, 100, lr, 0.1, 0.1) for s in range(101)]
    assert all(a <= b for a, b in zip(values[:10], values[1:11]))
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert min(values) >= floor
    assert lr_at(0, 100, lr, 0.0, 0.1) == pytest.approx(lr)  # no warmup


def _module(**train) -> LMModule:
    spec = parse_run_spec({
        "model": {"preset": "tiny-64", "structure": "1+1R2+1", "recurrence": "mesh"},
        "data": {"path": "unused", "seq_len": 16},
        "train": {"max_steps": 10, "global_batch": 2, "lr": 1e-2, "weight_decay": 0.1, "warmup": 0.2, **train},
    }).resolved()
    return LMModule(spec)


def test_no_decay_on_norms_biases_embeddings():
    module = _module()
    decay, no_decay = param_groups(module.model, 0.1)
    names = {n: "decay" for n in decay["names"]} | {n: "none" for n in no_decay["names"]}
    assert len(names) == len(decay["names"]) + len(no_decay["names"])  # each parameter once
    assert {id(p) for p in module.model.parameters()} == {id(p) for g in (decay, no_decay) for p in g["params"]}
    for name, module_ in module.model.named_modules():
        for pname, _ in module_.named_parameters(prefix=name, recurse=False):
            expected = "decay" if isinstance(module_, nn.Linear) and pname.endswith("weight") else "none"
            assert names[pname] == expected, pname
    assert names["embed_in.weight"] == "none" and names["embed_out.weight"] == "decay"
    assert any("router" in n for n in decay["names"]) and any("layernorm" in n for n in no_decay["names"])
    assert "embed_in.weight" in param_groups(module.model, 0.1, decay_embeddings=True)[0]["names"]


def test_adamw_leaves_undecayed_parameters_alone():
    module = _module()
    optimizer = module.configure_optimizers()["optimizer"]
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    for p in module.model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradients: only weight decay can move a parameter
    optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    decayed = set(param_groups(module.model, 0.1)[0]["names"])
    for name, p in module.model.named_parameters():
        expected = before[name] * (1 - lr * 0.1) if name in decayed else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)


def test_scheduler_follows_lr_at():
    module = _module()
    conf = module.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr_at(s, 10, 1e-2, 0.2, 0.1) for s in range(12)])


def test_step_sampler_order_is_a_function_of_the_step():
    full = list(StepSampler(50, 8, max_steps=14, seed=3, shuffle=True))
    assert len(full) == 14 * 8
    epoch0, epoch1 = full[: 6 * 8], full[6 * 8 : 12 * 8]  # 6 full batches per epoch of 50 windows
    assert len(set(epoch0)) == 48 and len(set(epoch1)) == 48 and epoch0 != epoch1
    resumed = list(StepSampler(50, 8, max_steps=14, seed=3, shuffle=True, start_step=5))
    assert resumed == full[5 * 8 :]
    ranks = [list(StepSampler(50, 8, 14, 3, True, rank=r, world_size=2)) for r in range(2)]
    for step in range(14):
        assert ranks[0][step * 4 : step * 4 + 4] + ranks[1][step * 4 : step * 4 + 4] == full[step * 8 : step * 8 + 8]
    assert list(StepSampler(50, 8, 2, 3, shuffle=False)) == list(range(16))


def test_read_metrics_merges_by_step_last_write_wins(tmp_path):
    rd = RunDir(tmp_path)
    rd.append_metrics({"step": 10, "tokens": 100, "train_loss": 5.0})
    rd.append_metrics({"step": 20, "tokens": 200, "train_loss": 4.0, "val": {"validation": {"loss": 4.5}}})
    with open(rd.metrics_path, "a") as f:
        f.write('{"step": 30, "tokens": 3')  # cut by a kill
    rd2 = RunDir(tmp_path)  # the resumed process
    rd2.append_metrics({"step": 20, "tokens": 200, "train_loss": 4.1})
    rd2.append_metrics({"step": 20, "tokens": 200, "val": {"other": {"loss": 4.6}}})
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [10, 20]
    assert records[1]["train_loss"] == 4.1 and set(records[1]["val"]) == {"validation", "other"}
    assert all(json.loads(line) for line in rd.metrics_path.read_text().splitlines()[-2:])
    assert read_metrics(tmp_path / "nothing") == []


def test_peak_flops_table():
    assert chip_of("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert chip_of("NVIDIA H100 PCIe") == "h100-pcie"
    assert chip_of("NVIDIA H100 NVL") == "h100-nvl"
    assert chip_of("NVIDIA H200") == "h200-sxm" and chip_of("NVIDIA H200 NVL") == "h200-nvl"
    assert chip_of("NVIDIA A100-SXM4-80GB") == "a100" and chip_of("Tesla V100-SXM2-16GB") is None
    assert PEAK_FLOPS["h100-sxm"]["bf16"] == pytest.approx(989.4e12)
    assert all(v["bf16"] == pytest.approx(2 * v["tf32"], rel=1e-3) and v["fp32"] < v["tf32"] for v in PEAK_FLOPS.values())
    assert peak_flops(torch.device("cpu"), "bf16-mixed") is None


def test_run_dir_refuses_another_spec_but_not_moved_data(tmp_path):
    from meshctl.errors import BadInput

    def spec(path: str, lr: float = 1e-3):
        return parse_run_spec({"model": "tiny-64", "data": {"path": path, "seq_len": 32},
                               "train": {"max_steps": 3, "global_batch": 4, "lr": lr}}).resolved()

    rd = RunDir(tmp_path / "run")
    assert rd.check_spec(spec("/a/demo")) is False and not rd.path.exists()
    rd.claim(spec("/a/demo"))
    written = rd.spec_path.read_text()
    assert rd.check_spec(spec("/scratch/b/demo"))  # the same dataset, moved: the same run
    with pytest.raises(BadInput, match="different run spec"):
        rd.check_spec(spec("/a/demo", lr=2e-3))
    with pytest.raises(BadInput, match="different run spec"):
        rd.check_spec(spec("/a/other-data"))
    rd.claim(spec("/scratch/b/demo"))
    assert rd.spec_path.read_text() == written

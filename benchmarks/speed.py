"""Speed and memory ratios of meshctl's models, each measured side by side in one process (issue 7).

    python benchmarks/speed.py [--quick] [--device cpu|cuda] [--reps N] [--out PATH]

- vanilla vs transformers: a training step (forward + backward + AdamW) of meshctl's vanilla model and
  `transformers.GPTNeoXForCausalLM` loaded from its export (same weights, config, dtype, batch and
  optimizer; attn_implementation="sdpa", use_cache=False), at a tiny shape and a Pythia-160M shape.
  Each computes its loss its own training way: meshctl `model(ids, targets=...)` (the fused head and
  cross-entropy, meshctl/models/loss.py), transformers `model(ids, labels=..., shift_labels=...).loss`.
  Recorded beside it, a ceiling: transformers' fastest step over a lower bound on any step of the same
  model (every matmul FLOP at the run's best dense-matmul rate, plus the same optimizer's time); and on
  CPU a reach: transformers' profiled step over the part of it spent in kernels any implementation
  built on torch's must run (GEMMs, AdamW, GELU, LayerNorm, embedding gradient; `MUST_RUN`), i.e. the
  most a faster model code could gain without GEMMs faster than torch's.
- MeSH vs `base`: the same recursive structure, step-time ratio and peak-memory ratio.
- On CPU both step ratios are measured twice: under glibc's default malloc, then keeping freed memory
  as `meshctl train` does (meshctl/train/allocator.py; benchmarks/allocator.py measures that setting).
- torch.compile per Block (the loop eager, as `meshctl train` does) vs eager; bf16 autocast vs fp32.
- MFU: FLOPs/token ("palm": matmuls incl. LM head and attention) x tokens/s over a dense matmul peak
  measured in the same run on the same device (fp32 2048^3, bf16 too where supported), so the ratio
  carries across machines; on a GPU also over the card's datasheet peak.

How it is measured. Contenders run alternately (A B, then B A, ...) after warm-up steps, and a ratio is
the median over those adjacent pairs, so load that drifts on a shared machine mostly cancels; the
ratio of the fastest steps is recorded as well. AdamW is torch's fused implementation (on CPU too,
since torch 2.4) for every contender. CPU peak memory is the high-water mark of live tensor bytes
during one training step, from the allocation and free events of the torch profiler
(`profile_memory=True`), added to the bytes held before the step (weights and optimizer state);
RSS would be too coarse within one process. On CUDA it is `torch.cuda.max_memory_allocated`. The
bytes autograd saves for backward (`saved_tensors_hooks`, unique storages, weights excluded) are
recorded too: a step's peak can sit at the optimizer (all gradients live) rather than at the
activations, and then the total hides what a recurrence stores.

Prints a table and writes benchmarks/results/speed.json (or --out) with the machine it ran on.
On a GPU: `python benchmarks/speed.py --device cuda` measures Pythia-160M and 410M shapes in bf16
autocast with SDPA (flash), fused AdamW and compile per layer: tokens/s, MFU and peak memory of
vanilla, base and MeSH, and the vanilla-vs-transformers ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from meshctl.models import ModelSpec, build, export_hf, flops_per_token, resolve
from meshctl.train.allocator import keep_freed_memory
from machine import cpu_model, positive  # benchmarks/machine.py

TINY = ModelSpec(n_layer=6, n_embd=256, n_head=4, vocab_size=8192, block_size=1024)  # = preset tiny-256


@dataclass(frozen=True)
class Shape:
    label: str
    spec: ModelSpec
    structure: str  # the recursive structure of the same unrolled depth, for MeSH vs base
    seq: int
    batch: int


# Recursive structures of the same unrolled depth as the presets' paper variants (presets.PAPER_VARIANTS).
CPU_SHAPES = [
    Shape("tiny d256 L6 v8192", TINY, "1+2R2+1", 256, 8),
    Shape("pythia-160m", resolve("pythia-160m"), "2+4R2+2", 128, 2),
]
GPU_SHAPES = [
    Shape("pythia-160m", resolve("pythia-160m"), "2+4R2+2", 2048, 16),
    Shape("pythia-410m", resolve("pythia-410m"), "4+8R2+4", 2048, 8),
]


@dataclass
class Contender:
    name: str
    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input ids, targets) -> mean token NLL
    optimizer: torch.optim.Optimizer
    amp: torch.dtype | None = None  # autocast dtype, None for full precision


def contender(name: str, model: nn.Module, device: str, amp: torch.dtype | None = None,
              loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Contender:
    """A model with its own training loss: meshctl's `model(ids, targets=...)` (the fused head) unless given."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    return Contender(name, model, loss or (lambda ids, targets: model(ids, targets=targets)), optimizer, amp)


def step_loss(c: Contender, batch: torch.Tensor) -> torch.Tensor:
    with torch.autocast(batch.device.type, dtype=c.amp or torch.float32, enabled=c.amp is not None):
        return c.loss(batch[:, :-1], batch[:, 1:])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(c: Contender, batch: torch.Tensor) -> tuple[float, float]:
    """One step; returns (forward + backward seconds, whole step seconds)."""
    device = batch.device.type
    sync(device)
    start = time.perf_counter()
    step_loss(c, batch).backward()
    sync(device)
    middle = time.perf_counter()
    c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)
    sync(device)
    return middle - start, time.perf_counter() - start


def paired(a: Contender, b: Contender, batch: torch.Tensor, reps: int, warmup: int = 2) -> dict[str, Any]:
    """Alternate a and b; b's cost relative to a as the median of adjacent pairs (and of fastest steps)."""
    for _ in range(warmup):
        train_step(a, batch)
        train_step(b, batch)
    times: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for i in range(reps):
        for key in ("a", "b") if i % 2 == 0 else ("b", "a"):
            times[key].append(train_step(a if key == "a" else b, batch))
    step_a, step_b = [t[1] for t in times["a"]], [t[1] for t in times["b"]]
    fb_a, fb_b = [t[0] for t in times["a"]], [t[0] for t in times["b"]]
    return {
        "baseline": a.name, "contender": b.name, "pairs": reps,
        "baseline_step_s": statistics.median(step_a), "contender_step_s": statistics.median(step_b),
        "step_ratio": statistics.median(y / x for x, y in zip(step_a, step_b)),
        "step_ratio_fastest": min(step_b) / min(step_a),
        "baseline_step_s_fastest": min(step_a), "contender_step_s_fastest": min(step_b),
        "fwd_bwd_ratio": statistics.median(y / x for x, y in zip(fb_a, fb_b)),
        "baseline_optimizer_s": statistics.median(s - f for s, f in zip(step_a, fb_a)),
        "contender_optimizer_s": statistics.median(s - f for s, f in zip(step_b, fb_b)),
    }


def step_flops(spec: ModelSpec, shape: Shape) -> float:
    """Matmul FLOPs of a training step, causal attention counted once (palm counts the masked half too)."""
    attention_skipped = 6.0 * spec.n_unrolled * spec.n_embd * shape.seq
    return (flops_per_token(spec, shape.seq, "palm") - attention_skipped) * shape.batch * shape.seq


def add_ceilings(ratios: list[dict[str, Any]], peaks: dict[str, float]) -> None:
    """The most any implementation of the same model could gain over the contender: its fastest step
    over a lower bound on a step, every matmul FLOP at the run's best dense-matmul rate plus the same
    optimizer's time. A target above it is out of reach."""
    for ratio in ratios:
        if "step_flops" in ratio:
            ratio["bound_step_s"] = ratio["step_flops"] / peaks[ratio["precision"]] + ratio["contender_optimizer_s"]
            ratio["ceiling"] = ratio["contender_step_s_fastest"] / ratio["bound_step_s"]


# Kernels a training step of this model and optimizer runs whatever the implementation, when it uses
# torch's: GEMMs of the layers and the LM head, fused AdamW, GELU, LayerNorm, the input embedding's
# gradient (its zero-fill and scatter, counted whole). Attention, rotary, the loss's softmax, residual
# adds and bias reductions are left out: another implementation could fuse or beat them.
MUST_RUN = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_fused_adamw_", "aten::gelu", "aten::gelu_backward",
            "aten::native_layer_norm", "aten::native_layer_norm_backward")
MUST_RUN_WHOLE = ("aten::embedding_dense_backward",)


def profiled_step(c: Contender, batch: torch.Tensor) -> tuple[float, float]:
    """(step seconds, seconds inside MUST_RUN kernels) of one CPU training step under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step_s = train_step(c, batch)[1]
    events = prof.key_averages()
    floor_us = sum(e.self_cpu_time_total for e in events if e.key in MUST_RUN)
    floor_us += sum(e.cpu_time_total for e in events if e.key in MUST_RUN_WHOLE)
    return step_s, floor_us / 1e6


def kernel_floor(a: Contender, b: Contender, batch: torch.Tensor, steps: int = 5) -> dict[str, Any]:
    """How far any implementation built on torch's kernels could get ahead of `b`: b's profiled step over
    the part of that same step spent in MUST_RUN kernels (median over steps, a's and b's alternating), so
    load that drifts between steps cancels. Unlike the ceiling, it takes the GEMMs at the rate they
    actually run at these shapes. a's figures show how much of its own step is left above the floor."""
    runs: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for _ in range(steps):
        runs["a"].append(profiled_step(a, batch))
        runs["b"].append(profiled_step(b, batch))
    out: dict[str, Any] = {}
    for key, side in (("a", "baseline"), ("b", "contender")):
        out[f"{side}_profiled_step_s"] = statistics.median(s for s, _ in runs[key])
        out[f"{side}_kernel_floor_s"] = statistics.median(f for _, f in runs[key])
        out[f"{side}_step_over_floor"] = statistics.median(s / f for s, f in runs[key])
    out["reach"] = out["contender_step_over_floor"]
    return out


def held_bytes(c: Contender) -> int:
    """Bytes of weights and optimizer state (held across steps), each storage once."""
    storages: dict[int, int] = {}
    tensors = [*c.model.parameters(), *c.model.buffers()]
    for state in c.optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    for t in tensors:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def peak_step_bytes(c: Contender, batch: torch.Tensor) -> dict[str, int]:
    """Peak memory of one training step: held bytes + the high-water mark of bytes allocated in the step."""
    if batch.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train_step(c, batch)
        peak = torch.cuda.max_memory_allocated()
        return {"held": before, "step_peak": peak - before, "total": peak}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(c, batch)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = high = 0
    for _, nbytes in events:
        live += nbytes
        high = max(high, live)
    held = held_bytes(c)
    return {"held": held, "step_peak": high, "total": held + high}


def saved_bytes(c: Contender, batch: torch.Tensor) -> int:
    """Bytes that autograd keeps for backward in one step (logits and loss included, weights excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in c.model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step_loss(c, batch)
    loss.backward()
    c.optimizer.zero_grad(set_to_none=True)
    return sum(saved.values())


def matmul_peak(device: str, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Best FLOP/s of an n^3 matmul (after warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def cpu_bf16_native() -> bool:
    """True where the CPU has bf16 instructions (avx512_bf16 / AMX): autocast bf16 is then worth measuring."""
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if checker is not None and not checker():
            return False
    except RuntimeError:
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def hf_twin(model: nn.Module, device: str, amp: torch.dtype | None) -> Contender:
    """transformers' GPTNeoXForCausalLM with the same weights, via meshctl's export."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, tmp)
        hf = transformers.GPTNeoXForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="sdpa")
    # its own training loss: labels given already shifted (ForCausalLMLoss: logits.float(), cross_entropy)
    return contender("transformers", hf, device, amp, loss=lambda ids, targets: hf(
        input_ids=ids, labels=targets, shift_labels=targets.contiguous(), use_cache=False).loss)


def compile_blocks(model: nn.Module) -> None:
    """As `meshctl train` with compile: every Block compiled in place (fullgraph), the loop left eager."""
    from meshctl.models.block import Block

    for module in model.modules():
        if isinstance(module, Block):
            module.compile(fullgraph=True)


def batch_for(spec: ModelSpec, shape: Shape, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, spec.vocab_size, (shape.batch, shape.seq + 1), generator=generator).to(device)


def throughput(c: Contender, spec: ModelSpec, shape: Shape, result: dict[str, Any], side: str, precision: str,
               compiled: bool) -> dict[str, Any]:
    """tokens/s from the median step; achieved FLOP/s from the fastest, to set against the best matmul."""
    tokens = shape.batch * shape.seq
    fastest = result[f"{side}_step_s_fastest"]
    return {
        "model": c.name, "shape": shape.label, "structure": spec.structure, "seq": shape.seq, "batch": shape.batch,
        "precision": precision, "compiled": compiled, "step_s": result[f"{side}_step_s"], "step_s_fastest": fastest,
        "tokens_per_s": tokens / result[f"{side}_step_s"],
        "achieved_tflops": flops_per_token(spec, shape.seq, "palm") * tokens / fastest / 1e12,
    }


def add_mfu(rows: list[dict[str, Any]], peaks: dict[str, float]) -> None:
    """MFU = achieved FLOP/s (fastest step) over the best matmul FLOP/s of the run (and the card's peak)."""
    for row in rows:
        achieved = row["achieved_tflops"] * 1e12
        row["mfu_vs_measured_matmul"] = achieved / peaks[row["precision"]]
        if "card_" + row["precision"] in peaks:
            row["mfu_vs_card_peak"] = achieved / peaks["card_" + row["precision"]]


def release(*contenders: Contender) -> None:
    for c in contenders:
        c.model.to("cpu")
        del c.model, c.optimizer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    gpu = device == "cuda"
    shapes = GPU_SHAPES if gpu else CPU_SHAPES[:1] if args.quick else CPU_SHAPES
    # full precision on a GPU is TF32 only if allowed; we measure bf16 there, fp32 + bf16 on CPU
    amp = torch.bfloat16 if gpu else None
    precision = "bf16" if gpu else "fp32"
    bf16_ok = gpu or cpu_bf16_native()
    peaks: dict[str, float] = {}

    def measure_peaks() -> None:  # several times through the run; the best counts (load only slows down)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))[: 2 if bf16_ok else 1]:
            peaks[name] = max(peaks.get(name, 0.0), matmul_peak(device, dtype, 8192 if gpu else 2048))

    ratios: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []

    allocator = "cuda caching" if gpu else "glibc default"

    def record(kind: str, shape: Shape, result: dict[str, Any], target: str, met: bool | None) -> None:
        ratios.append({"comparison": kind, "shape": shape.label, "seq": shape.seq, "batch": shape.batch,
                       "precision": precision, "allocator": allocator, **result, "target": target, "met": met})
        print(f"  {kind:<34} {shape.label:<20} {allocator:<14} {result['step_ratio']:.3f}", flush=True)

    def step_ratios(shape: Shape, batch: torch.Tensor, keep_rows: bool) -> tuple[Contender, Contender, Contender]:
        """1. meshctl vanilla vs transformers' GPT-NeoX, both eager (speed-up = their time / ours);
        2. MeSH vs base of the same structure (cost = mesh / base), compiled per layer on a GPU."""
        spec, reps = shape.spec, args.reps
        ours = contender("meshctl vanilla", build(spec, seed=0), device, amp)
        theirs = hf_twin(ours.model, device, amp)
        r = paired(ours, theirs, batch, reps)
        r["step_flops"] = step_flops(spec, shape)
        if not gpu:
            r.update(kernel_floor(ours, theirs, batch))
        record("transformers / meshctl step time", shape, r, ">= 1.25", r["step_ratio"] >= 1.25)
        if keep_rows:
            rows.append(throughput(ours, spec, shape, r, "baseline", precision, False))
            rows.append(throughput(theirs, spec, shape, r, "contender", precision, False))
        release(theirs)
        rec = spec.variant(family="recursive", structure=shape.structure)
        base = contender(f"{shape.structure} base", build(rec.variant(recurrence="base"), seed=0), device, amp)
        mesh = contender(f"{shape.structure} mesh", build(rec.variant(recurrence="mesh"), seed=0), device, amp)
        if gpu:
            compile_blocks(base.model)
            compile_blocks(mesh.model)
        r = paired(base, mesh, batch, 2 * reps)  # a few percent apart: twice the pairs
        record("mesh / base step time", shape, r, "<= 1.03", r["step_ratio"] <= 1.03)
        if keep_rows:
            for c, side in ((base, "baseline"), (mesh, "contender")):
                rows.append(throughput(c, c.model.spec, shape, r, side, precision, gpu))
        return ours, base, mesh

    if not gpu:
        # First with glibc's default malloc (as a fresh Python process has it), then keeping freed memory
        # as `meshctl train` does on CPU (meshctl/train/allocator.py): by default every step page-faults
        # its large activations and gradients in again, a cost that depends on how many fresh buffers a
        # model allocates rather than on its arithmetic. Both contenders share each setting.
        for shape in shapes:
            measure_peaks()
            release(*step_ratios(shape, batch_for(shape.spec, shape, device), keep_rows=False))
        allocator = "kept" if keep_freed_memory() else "glibc default"

    for shape in shapes:
        measure_peaks()
        spec, reps = shape.spec, args.reps
        batch = batch_for(spec, shape, device)
        ours, base, mesh = step_ratios(shape, batch, keep_rows=True)
        mem = {"shape": shape.label, "structure": shape.structure, "precision": precision,
               **{f"vanilla_{k}": v for k, v in peak_step_bytes(ours, batch).items()},
               **{f"base_{k}": v for k, v in peak_step_bytes(base, batch).items()},
               **{f"mesh_{k}": v for k, v in peak_step_bytes(mesh, batch).items()}}
        for name, c in (("vanilla", ours), ("base", base), ("mesh", mesh)):
            mem[f"{name}_saved_for_backward"] = saved_bytes(c, batch)
        mem["mesh_over_base_total"] = mem["mesh_total"] / mem["base_total"]
        mem["mesh_over_base_saved"] = mem["mesh_saved_for_backward"] / mem["base_saved_for_backward"]
        mem["mesh_over_base_step_peak"] = mem["mesh_step_peak"] / mem["base_step_peak"]
        mem["target"], mem["met"] = "total <= 1.10", mem["mesh_over_base_total"] <= 1.10
        memory.append(mem)
        print(f"  {'mesh / base peak memory':<34} {shape.label:<20} {mem['mesh_over_base_total']:.3f}", flush=True)
        release(base, mesh)

        # 3. compile per Block vs eager (every GPU shape, the first CPU one); bf16 autocast vs fp32 on CPU
        if gpu or shape is shapes[0]:
            compiled = contender("meshctl vanilla compiled", build(spec, seed=0), device, amp)
            compile_blocks(compiled.model)
            start = time.perf_counter()
            train_step(compiled, batch)
            first_step_s = time.perf_counter() - start
            r = paired(ours, compiled, batch, reps)
            r["first_compiled_step_s"] = first_step_s
            record("compiled / eager step time", shape, r, "", None)
            rows.append(throughput(compiled, spec, shape, r, "contender", precision, True))
            if not gpu and bf16_ok:
                half = contender("meshctl vanilla bf16", build(spec, seed=0), device, torch.bfloat16)
                r = paired(ours, half, batch, reps)
                record("bf16 autocast / fp32 step time", shape, r, "", None)
                rows.append(throughput(half, spec, shape, r, "contender", "bf16", False))
                release(half)
                compiled.amp = torch.bfloat16
                r = paired(ours, compiled, batch, reps)  # its warm-up steps recompile for bf16
                compiled.name = "meshctl vanilla compiled bf16"
                record("compiled bf16 / eager fp32 step time", shape, r, "", None)
                rows.append(throughput(compiled, spec, shape, r, "contender", "bf16", True))
            release(compiled)
        release(ours)
    measure_peaks()
    if gpu:
        from meshctl.train.hardware import PEAK_FLOPS, chip_of

        chip = chip_of(torch.cuda.get_device_name())
        if chip is not None:
            peaks["card_bf16"], peaks["card_fp32"] = PEAK_FLOPS[chip]["bf16"], PEAK_FLOPS[chip]["tf32"]
    add_mfu(rows, peaks)
    add_ceilings(ratios, peaks)
    return {"ratios": ratios, "throughput": rows, "memory": memory,
            "matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()}, "bf16_measured": bf16_ok}


def machine(device: str) -> dict[str, Any]:
    import transformers

    info = {
        "device": device, "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = doc["machine"]
    console = Console(width=200)
    table = Table(title=f"ratios, measured side by side ({m.get('gpu') or m['cpu']}, {m['torch_threads']} threads, "
                        f"torch {m['torch']}; load {m['load_average_1m']:.1f} -> {m['load_average_1m_end']:.1f})")
    for header in ("comparison", "shape", "seq x batch", "malloc", "baseline s", "contender s", "ratio", "fastest",
                   "fwd+bwd", "target"):
        table.add_column(header, justify="left" if header in ("comparison", "shape") else "right", no_wrap=True)
    for r in doc["ratios"]:
        met = "" if r["met"] is None else " ok" if r["met"] else " MISSED"
        bounds = ", ".join(f"{key} {r[key]:.2f}" for key in ("ceiling", "reach") if key in r)
        table.add_row(r["comparison"], r["shape"], f"{r['seq']} x {r['batch']}", r["allocator"], f"{r['baseline_step_s']:.3f}",
                      f"{r['contender_step_s']:.3f}", f"{r['step_ratio']:.3f}", f"{r['step_ratio_fastest']:.3f}",
                      f"{r['fwd_bwd_ratio']:.3f}",
                      r["target"] + met + (f" ({bounds})" if bounds else ""))
    for r in doc["memory"]:
        met = " ok" if r["met"] else " MISSED"
        table.add_row("mesh / base peak memory", r["shape"], "", "", f"{r['base_total'] / 2**20:.0f} MiB",
                      f"{r['mesh_total'] / 2**20:.0f} MiB", f"{r['mesh_over_base_total']:.3f}",
                      f"step {r['mesh_over_base_step_peak']:.3f}", f"saved {r['mesh_over_base_saved']:.3f}",
                      r["target"] + met)
    console.print(table)
    peaks = ", ".join(f"{k} {v:.2f}" for k, v in doc["matmul_peak_tflops"].items())
    table = Table(title=f"throughput and MFU (matmul peak TFLOP/s: {peaks})")
    card = any("mfu_vs_card_peak" in r for r in doc["throughput"])
    headers = ("model", "shape", "precision", "compiled", "s/step", "tokens/s", "TFLOP/s", "MFU", *["MFU card"] * card)
    for header in headers:
        table.add_column(header, justify="left" if header in ("model", "shape") else "right", no_wrap=True)
    for r in doc["throughput"]:
        table.add_row(r["model"], r["shape"], r["precision"], "yes" if r["compiled"] else "no", f"{r['step_s']:.3f}",
                      f"{r['tokens_per_s']:,.0f}", f"{r['achieved_tflops']:.3f}", f"{r['mfu_vs_measured_matmul']:.2f}",
                      *[f"{r.get('mfu_vs_card_peak', float('nan')):.2f}"] * card)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--reps", type=positive, default=10, help="timed pairs per comparison")
    parser.add_argument("--quick", action="store_true", help="CPU: the tiny shape only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speed.json")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    info = machine(args.device)
    doc: dict[str, Any] = {"benchmark": "speed", "machine": info, **run(args)}
    info["load_average_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    doc["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(doc)
    print(f"wrote {args.out} ({doc['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()

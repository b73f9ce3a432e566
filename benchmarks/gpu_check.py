"""Issue 7's GPU checks in one command, for a machine lent for minutes with no internet:

    python benchmarks/gpu_check.py --out DIR [--reps N] [--skip-speed]

1. environment: GPU, torch / transformers versions, whether bf16 and flash attention are available;
2. flash attention: a training step of meshctl's model (bf16 autocast) with SDPA restricted to the
   flash backend, so a layout it cannot take fails here rather than silently falling back;
3. training through meshctl's own job code on the GPU (Lightning, bf16-mixed, compile per Block, fused
   AdamW) on a corpus made from this repository's Markdown files: the loss must fall;
4. benchmarks/speed.py --device cuda: pythia-160m and 410m shapes, vanilla vs transformers, base vs
   MeSH, compiled vs eager; tokens/s, MFU against the card's peak, peak memory.

Writes DIR/gpu_check.json (steps 1-3), DIR/speed.json and DIR/train.log. Needs torch, lightning,
transformers, tokenizers and pydantic importable, with the repository root on PYTHONPATH. Where pip
cannot reach an index there, bring pydantic as wheels: `make gpu-wheels` here, then there
`python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and
`PYTHONPATH=.:/tmp/site python3 benchmarks/gpu_check.py --out DIR`.
`--device cpu` runs steps 1-3 on the CPU in fp32 (a dry run of this script; step 2 is skipped).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from machine import positive  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]


def environment(device: str) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        info["flash_sdp_enabled"] = torch.backends.cuda.flash_sdp_enabled()
    return info


def flash_step() -> dict[str, Any]:
    """A forward + backward of pythia-160m (seq 2048) with SDPA allowed only its flash kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from meshctl.models import build

    model = build("pythia-160m", seed=0).cuda()
    ids = torch.randint(0, 50000, (2, 2049), device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids[:, :-1], targets=ids[:, 1:])
    loss.backward()
    grads_finite = all(torch.isfinite(p.grad).all().item() for p in model.parameters() if p.grad is not None)
    return {"loss": loss.item(), "grads_finite": grads_finite, "ok": grads_finite and torch.isfinite(loss).item()}


def corpus(out: Path) -> Path:
    """This repository's Markdown as JSONL documents (one per paragraph): real text that travels with it."""
    docs = []
    for path in sorted(ROOT.rglob("*.md")):
        if ".venv" in path.parts or "node_modules" in path.parts:
            continue
        docs += [p.strip() for p in path.read_text(encoding="utf-8", errors="ignore").split("\n\n") if len(p.strip()) > 80]
    source = out / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return source


def training(device: str, out: Path) -> dict[str, Any]:
    """meshctl's own training job on a tiny MeSH model: compile per Block, bf16-mixed on a GPU."""
    import shutil

    from meshctl.data.prepare import prepare
    from meshctl.train.job import run_training
    from meshctl.train.rundir import read_metrics

    work = out / "train"
    work.mkdir(parents=True, exist_ok=True)
    prepare([corpus(work)], work / "data", vocab_size=2048, val_fraction=0.05, seed=0, progress=False)
    spec = {
        "model": "tiny-128-1+1R2+1-mesh" if device == "cuda" else "tiny-64-1+1R2+1-mesh",
        "data": {"path": str(work / "data"), "seq_len": 128},
        "train": {"max_steps": 60, "global_batch": 32, "micro_batch": 32, "lr": 3e-3, "warmup": 0.1,
                  "log_every": 10, "val_every": 60, "val_batches": 2, "ckpt_every": 60,
                  "precision": "bf16-mixed" if device == "cuda" else "32", "compile": device == "cuda"},
        "seed": 0,
    }
    start = time.perf_counter()
    try:
        final = run_training(spec, work / "run")
    finally:  # the run's own log, where a fetch of DIR's top level finds it
        if (work / "run" / "logs" / "train.log").exists():
            shutil.copy(work / "run" / "logs" / "train.log", out / "train.log")
    records = read_metrics(work / "run")
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    return {"spec": spec, "wall_s": time.perf_counter() - start, "train_losses": losses,
            "val_loss": final.get("val_loss"), "ok": len(losses) >= 2 and losses[-1] < losses[0] - 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, speed.json, train.log")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--reps", type=positive, default=5, help="timed pairs per comparison in speed.py")
    parser.add_argument("--skip-speed", action="store_true", help="steps 1-3 only")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here (use --device cpu for a dry run)")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(args.device)}
    print(json.dumps(report["environment"]), flush=True)
    checks = [("training", lambda: training(args.device, args.out))]
    if args.device == "cuda":
        checks.insert(0, ("flash_step", flash_step))
    for name, check in checks:
        try:
            report[name] = check()
        except Exception as exc:  # record and go on: one failed check should not cost the others
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(report[name])[:2000], flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.device == "cuda" and not args.skip_speed:
        cmd = [sys.executable, str(Path(__file__).parent / "speed.py"), "--device", "cuda", "--reps", str(args.reps),
               "--out", str(args.out / "speed.json")]
        report["speed_rc"] = subprocess.run(cmd).returncode
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    failed = [name for name, _ in checks if not report[name].get("ok")]
    if failed or report.get("speed_rc", 0):
        sys.exit(f"gpu_check: failed: {', '.join(failed) or 'speed.py'} (details in {args.out / 'gpu_check.json'})")


if __name__ == "__main__":
    main()

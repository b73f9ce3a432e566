"""Peak dense FLOP/s of common accelerators, for MFU and GPU-hour estimates (no torch here).

Peak dense (no 2:4 sparsity) tensor FLOP/s per GPU, from NVIDIA's datasheets, which quote the sparse
figure for tensor cores (dense = half of it):
  H100 SXM5 / PCIe / NVL (H100 datasheet, 2023): FP32 67 / 51 / 60 TF; TF32 989 / 756 / 835 sparse;
    BF16 1,979 / 1,513 / 1,671 sparse.
  H200 SXM / NVL (H200 datasheet, 2024): FP32 67 / 60 TF; TF32 989 / 835 sparse; BF16 1,979 / 1,671 sparse.
  A100 SXM4 and PCIe, 40 and 80 GB (A100 datasheet, 2021): FP32 19.5 TF; TF32 312 sparse; BF16 624 sparse.
Lightning's `_CUDA_FLOPS` table agrees for bf16 (9.895e14 H100 SXM, 7.56e14 PCIe, 8.355e14 NVL).
"""

from __future__ import annotations

PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h100-sxm": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 67e12},
    "h100-pcie": {"bf16": 756.5e12, "tf32": 378e12, "fp32": 51e12},
    "h100-nvl": {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
    "h200-sxm": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 67e12},
    "h200-nvl": {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
    "a100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}


def chip_of(device_name: str) -> str | None:
    """`torch.cuda.get_device_name()` -> a PEAK_FLOPS key, e.g. "NVIDIA H100 80GB HBM3" -> "h100-sxm"."""
    name = device_name.lower()
    for family in ("h100", "h200"):
        if family in name:
            if "nvl" in name:
                return f"{family}-nvl"
            if "pcie" in name:
                return f"{family}-pcie" if family == "h100" else None
            return f"{family}-sxm"
    return "a100" if "a100" in name else None


def precision_kind(precision: str) -> str:
    """The PEAK_FLOPS column a run's precision uses. Training leaves torch's fp32 matmul precision at
    "highest", so fp32 runs are planned at true fp32 peaks, as their MFU is measured."""
    return "bf16" if precision == "bf16-mixed" else "fp32"

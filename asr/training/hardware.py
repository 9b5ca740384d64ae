"""What the machine is: its CPU model (written next to every timing) and the precision that is
fast on it. No Lightning here, so benchmarks can record the machine without importing it."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (as `lscpu` prints it), recorded next to every training time."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_isa() -> str | None:
    """The CPU's native bf16 matrix instructions, or None where bf16 is emulated in fp32.

    "amx_bf16": AMX tiles (Intel Sapphire Rapids and later); "avx512_bf16": AVX-512 bf16 dot
    products (Intel Cooper Lake, AMD Zen 4 and later). On 2 cores a 2048^2 bf16 matmul ran 2.4x
    fp32's speed on an AMX Xeon and 2.8x on an AMD EPYC with avx512_bf16 (BENCHMARKS.md); on
    CPUs with neither, 5x slower.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = {flag for line in text.splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}  # fmt: skip
    return next((isa for isa in ("amx_bf16", "avx512_bf16") if isa in flags), None)


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """`trainer.precision` for Lightning; "auto" picks bf16-mixed where bf16 is fast.

    bf16-mixed on a CUDA GPU that supports it, or on a CPU with native bf16 matrix instructions
    (`cpu_bf16_isa`); 32-true elsewhere, where bf16 is emulated and runs slower than fp32.
    """
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_bf16_isa() else "32-true"

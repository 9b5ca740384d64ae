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


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Intel Sapphire Rapids and later)."""
    try:
        return " amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """`trainer.precision` for Lightning; "auto" picks bf16-mixed where bf16 is fast.

    bf16-mixed on a CUDA GPU that supports it, or on a CPU with AMX (a 2048^2 bf16 matmul ran
    2.4x faster than fp32 on 2 cores of such a Xeon, as issue 15 reports); 32-true elsewhere,
    e.g. on AMD EPYC without AMX, where bf16 matmuls ran 5x slower than fp32 (same source).
    """
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_amx() else "32-true"

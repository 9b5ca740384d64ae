"""Shared helpers of the `bench/` scripts: interleaved timing, the matmul peak, FLOP counting.

Timing on shared machines: every case is run once per round, rounds repeat, and each case's
median over rounds is reported with its spread (min, max). Cases that are compared are timed
in the same rounds, so a noisy neighbour slows all of them alike and their ratio stays honest.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

from asr.training.hardware import cpu_bf16_isa, cpu_model


def set_threads(threads: int) -> None:
    """Intra-op threads for torch (and MKL/oneDNN through it)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def interleave(
    cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall seconds, process CPU seconds) of each case per round; rounds alternate the cases.

    `warmup` untimed rounds first (allocator, oneDNN primitive caches, lazy init). With one
    thread, CPU time is the noise-proof measure on a shared machine: time spent descheduled
    while a neighbour runs does not count. With more threads it also counts threads spinning
    while they wait for each other, so there wall time on a quiet machine is the measure.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def summarize(seconds: list[float], work: float) -> dict[str, float]:
    """Times of one case -> median/min/max seconds and `work` per second at the median.

    `work` is what one call does (audio seconds, FLOPs): rate = work / median seconds. The
    spread is given as the rate at the slowest and fastest round.
    """
    median = statistics.median(seconds)
    return {
        "median_s": round(median, 4),
        "min_s": round(min(seconds), 4),
        "max_s": round(max(seconds), 4),
        "rate": round(work / median, 2),
        "rate_range": [round(work / max(seconds), 2), round(work / min(seconds), 2)],
        "rounds": len(seconds),
    }


def matmul_peak(size: int = 2048) -> Callable[[], float]:
    """A case that runs one fp32 `size` x `size` GEMM: 2 * size^3 FLOPs per call."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    c = torch.empty(size, size)

    def run() -> float:
        torch.mm(a, b, out=c)
        return float(2 * size**3)

    return run


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of one call of `fn` (matmuls, convolutions, attention), total and per operator.

    `FlopCounterMode` has no formula for the CPU attention kernel
    (`_scaled_dot_product_flash_attention_for_cpu`), so one is added here: QK^T and AV, the same
    count torch uses for the GPU kernels. Element-wise work (softmax, norms, activations) is not
    counted, by the usual convention; it is a few percent of the matmul FLOPs here. And torch's
    formula for the convolution backward ignores groups (it counts a depthwise conv's gradients
    as a dense conv's, D times too many): here each gradient computed costs the forward's FLOPs.
    """
    aten = torch.ops.aten
    extra = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
        aten.convolution_backward: _conv_backward_flops,
    }
    counter = FlopCounterMode(display=False, custom_mapping=extra)
    with counter:
        fn()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), per_op


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _conv_backward_flops(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
    _output_padding, _groups, output_mask, out_shape=None,
) -> int:  # fmt: skip
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was."""
    return {
        "cpu": cpu_model(),
        "bf16_isa": cpu_bf16_isa(),  # "AMD EPYC" alone: bf16 at 2.8x or 0.2x fp32
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


# --- live latency: when a word is on screen against when it was spoken ----------------------


def word_ends(reference: list[Any], words: list[str]) -> dict[int, float]:
    """{index in `words`: end time} for the words a reference transcription (`Word`s with
    `word` and `end`, e.g. the model's offline word times) has too, matched in order (difflib's
    longest matching blocks); the words the two do not share are left out."""
    import difflib

    matcher = difflib.SequenceMatcher(None, [w.word for w in reference], words, autojunk=False)
    ends: dict[int, float] = {}
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            ends[block.b + k] = reference[block.a + k].end
    return ends


def first_shown(partials: list[tuple[float, str]], words: list[str]) -> list[float | None]:
    """Per final word, the time of the first partial text (time, text; in time order) whose
    word at that place is already the final word, complete (a partial's last word may still
    grow: "th" before "the"); None for a word no partial shows."""
    shown: list[float | None] = [None] * len(words)
    for at, text in partials:
        for k, word in enumerate(text.split()[: len(words)]):
            if shown[k] is None and word == words[k]:
                shown[k] = at
    return shown


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    """median and p90 of `values` times `scale` (seconds -> ms), rounded; None when empty."""
    import numpy as np

    if not values:
        return {"median": None, "p90": None}
    return {
        "median": round(float(np.median(values)) * scale, 1),
        "p90": round(float(np.percentile(values, 90)) * scale, 1),
    }


# --- a real `asr serve` in a subprocess ---------------------------------------------------


class ServeProcess:
    """`asr serve --model MODEL --port 0 ARGS...` in a subprocess on a free loopback port, its
    output in `log`; `url` is the http:// address the server printed once it listens."""

    def __init__(self, model: str, args: list[str], log: Path, timeout: float = 300) -> None:
        self.log = log
        command = [sys.executable, "-c", "import sys; from asr.cli import main; sys.exit(main())",
                   "serve", "--model", model, "--port", "0", *args]  # fmt: skip
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self.url = self._wait_for_url(timeout)

    def _wait_for_url(self, timeout: float) -> str:
        began = time.monotonic()
        while time.monotonic() - began < timeout and self.process.poll() is None:
            found = re.search(r"^asr serve: (http://\S+)", self.log.read_text(), re.MULTILINE)
            if found:
                return found[1]
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"asr serve did not start:\n{self.log.read_text()}")

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (VmHWM, Linux)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

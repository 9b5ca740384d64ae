"""Does a long training slow down, and is it the process or the machine?

Trains `--config` (any `asr train` overrides after it) with a probe callback that records, for
every step, the seconds of the step itself (batch start to end: forward, backward, optimizer)
and the seconds between steps (loading, augmentation, logging, validation), and every
`--every` steps three yardsticks:

- one fixed batch (the run's first, features frozen): forward + backward, best of 3. The same
  work at every probe: if it gets slower, the process or the machine got slower, not the data;
- a 2048^3 fp32 matrix product with preallocated buffers, best of 3, in GFLOP/s: the machine's
  speed, nearly blind to the process's allocator and caches. The fixed batch slowing while this
  holds points at the process; both slowing together, at the machine;
- resident memory, live Python objects and minor page faults per step (allocator churn).

Prints one row per block of `--block` steps and writes every record to `--out` (JSON lines).
Example (BENCHMARKS.md, "Fifth session"):

    python bench/step_drift.py --config configs/an4.yaml --out /tmp/drift.jsonl \
        exp_dir=/tmp/drift data.train_manifest=/tmp/real-speech/split/train.jsonl \
        data.val_manifest=/tmp/real-speech/split/val.jsonl \
        tokenizer.path=/tmp/real-speech/split/tokenizer_char.json trainer.max_time=00:00:15:00
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _common import machine, matmul_peak, set_threads

from asr.config import load_config
from asr.model import ctc_objective
from asr.training.train import train


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class DriftProbe(L.Callback):
    """Per-step timings and periodic yardsticks of a training, one JSON line each to `out`."""

    def __init__(self, out: Path, every: int) -> None:
        self.out = out.open("w")
        self.every = every
        self.fixed: tuple[torch.Tensor, ...] | None = None
        self.matmul = matmul_peak()
        self.step_began = 0.0
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.faults_step = 0

    def write(self, **record: Any) -> None:
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def fixed_batch_seconds(self, system: Any) -> float:
        feats, lengths, targets, target_lengths = self.fixed  # type: ignore[misc]
        times = []
        for _ in range(3):
            began = time.perf_counter()
            loss, _ = ctc_objective(system.model, feats, lengths, targets, target_lengths,
                                    system.config.optim.inter_ctc_weight)  # fmt: skip
            loss.backward()
            times.append(time.perf_counter() - began)
        system.zero_grad(set_to_none=True)  # the probe's gradients never reach the optimizer
        return min(times)

    def matmul_gflops(self) -> float:
        times = []
        for _ in range(3):
            began = time.perf_counter()
            flops = self.matmul()
            times.append(time.perf_counter() - began)
        return flops / min(times) / 1e9

    def on_train_batch_start(self, trainer: L.Trainer, system: Any, batch: Any, _: int) -> None:
        if self.fixed is None and batch is not None and len(batch):
            feats, lengths = system.features(batch, augment=False)
            self.fixed = (feats, lengths, batch.targets.clone(), batch.target_lengths.clone())
        self.step_began = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, system: Any, _o: Any, batch: Any,
                           _i: int) -> None:  # fmt: skip
        ended = time.perf_counter()
        step = trainer.global_step
        record: dict[str, Any] = {"step": step, "began": self.step_began, "ended": ended,
                                  "step_s": ended - self.step_began}  # fmt: skip
        if batch is not None and len(batch):
            record["audio_s"] = float(batch.wave_lengths.sum()) / system.config.features.sample_rate
        if step % self.every == 0 and self.fixed is not None:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            record.update(
                fixed_s=self.fixed_batch_seconds(system),
                matmul_gflops=self.matmul_gflops(),
                rss_mb=resident_mb(),
                python_objects=len(gc.get_objects()),
                faults_per_step=(faults - self.faults) / self.every,
            )
            self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.write(**record)


def blocks(records: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Per `size` steps: wall and step seconds per step, the yardsticks of the block's probes."""
    steps = [r for r in records if "step_s" in r]
    rows = []
    for start in range(0, len(steps) - 1, size):
        block = steps[start : start + size + 1]  # +1: the wall time up to the next step's start
        if len(block) < 2:
            break
        wall = (block[-1]["began"] - block[0]["began"]) / (len(block) - 1)
        compute = sum(r["step_s"] for r in block[:-1]) / (len(block) - 1)
        probes = [r for r in block[:-1] if "fixed_s" in r]
        row = {"steps": f"{block[0]['step']}-{block[-2]['step']}", "wall_per_step_s": wall,
               "step_s": compute, "between_steps_s": wall - compute}  # fmt: skip
        for key in ("fixed_s", "matmul_gflops", "rss_mb", "python_objects", "faults_per_step"):
            if probes:
                row[key] = sum(p[key] for p in probes) / len(probes)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per step")
    parser.add_argument("--every", type=int, default=100, help="steps between yardsticks")
    parser.add_argument("--block", type=int, default=200, help="steps per printed row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    args = parser.parse_args()
    if not args.config.is_file():
        sys.exit(f"step_drift: config file not found: {args.config}")
    set_threads(args.threads)
    config = load_config(args.config, args.overrides)
    probe = DriftProbe(args.out, args.every)
    train(config, callbacks=[probe])
    probe.out.close()
    records = [json.loads(line) for line in args.out.open()]
    print(json.dumps(machine()))
    print("| steps | s/step (wall) | step itself | between steps | fixed batch s | matmul "
          "GFLOP/s | RSS MB | minor faults/step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in blocks(records, args.block):
        cells = [f"{row[k]:.3f}" for k in ("wall_per_step_s", "step_s", "between_steps_s")]
        cells += [f"{row[k]:.3f}" if k in row else "" for k in ("fixed_s",)]
        cells += [f"{row[k]:.0f}" if k in row else "" for k in
                  ("matmul_gflops", "rss_mb", "faults_per_step")]  # fmt: skip
        print(f"| {row['steps']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

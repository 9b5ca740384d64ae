"""Training throughput of the whole pipeline against the model step alone, on the same batches.

Three ways to run the same training steps (S preset, ~80 s of audio per batch, AdamW), rounds
interleaved, audio-seconds per second:

- `model_step`: `CtcModel` forward, CTC loss, backward, optimizer step on features computed
  beforehand: the ceiling;
- `frontend_and_model`: the same batches as waveforms in memory: log-mel features and
  SpecAugment (`AsrSystem.features`) then the model step;
- `full_pipeline`: `AsrDataModule`'s DataLoader (worker processes reading WAV files from disk,
  speed perturbation, bucketing, collation) feeding `AsrSystem.features` and the model step.

The corpus is synthesized into a temporary folder (tone chords in noise, 9-11 s, random
letter-string transcripts): throughput depends on durations, not on content. Each round makes a
fresh DataLoader iterator; its first batch (worker start-up) is not timed.

    .venv/bin/python bench/pipeline_throughput.py            # about 3 min on 2 quiet cores
    .venv/bin/python bench/pipeline_throughput.py --quick    # about 1 min
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, set_threads, write_json

from asr.config import DataConfig, TrainConfig, TrainerConfig
from asr.data.dataset import Batch
from asr.data.manifest import Utterance, write_manifest
from asr.model import ctc_loss
from asr.tokenizer import CharTokenizer
from asr.training.datamodule import AsrDataModule
from asr.training.system import AsrSystem

SAMPLE_RATE = 16000
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def make_corpus(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` WAV files of 9-11 s and their JSONL manifest; returns the manifest path."""
    rng = np.random.default_rng(seed)
    utterances = []
    for i in range(count):
        seconds = float(rng.uniform(9.0, 11.0))
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        chord = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 3000, size=3))
        wave = 0.1 * chord / 3 + 0.02 * rng.standard_normal(len(t))
        path = folder / f"utt{i:03d}.wav"
        sf.write(path, wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        words = [
            "".join(rng.choice(list(LETTERS), size=rng.integers(2, 8)))
            for _ in range(int(2.5 * seconds))  # about 2.5 words a second, like read speech
        ]
        utterances.append(
            Utterance(f"utt{i:03d}", str(path), " ".join(words), len(t) / SAMPLE_RATE)
        )
    manifest = folder / "train.jsonl"
    write_manifest(utterances, manifest)
    return manifest


def build(manifest: Path, preset: str, batch_seconds: float, workers: int):
    config = TrainConfig(
        model=preset,
        data=DataConfig(
            train_manifest=str(manifest), max_batch_seconds=batch_seconds, num_workers=workers
        ),
        trainer=TrainerConfig(seed=0),
    )
    tokenizer = CharTokenizer(LETTERS)
    system = AsrSystem(config, tokenizer)

    def frames_for_duration(seconds: float) -> int:
        samples = int(seconds * config.features.sample_rate)
        return int(system.model.output_lengths(torch.tensor(system.frontend.num_frames(samples))))

    datamodule = AsrDataModule(config, tokenizer, frames_for_duration)
    datamodule.setup("fit")
    return system, datamodule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="s")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batch-seconds", type=float, default=80.0)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 steps")
    parser.add_argument("--output", default="bench/results/pipeline_throughput.json")
    args = parser.parse_args()
    set_threads(args.threads)
    steps, rounds = (2, 1) if args.quick else (args.steps, args.rounds)
    random.seed(0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        per_batch = int(args.batch_seconds // 10)
        manifest = make_corpus(Path(tmp), (steps + 2) * per_batch)
        system, datamodule = build(manifest, args.preset, args.batch_seconds, args.workers)
        result = measure(system, datamodule, steps, rounds)
    result = {
        "command": " ".join(["bench/pipeline_throughput.py", *sys.argv[1:]]),
        "machine": machine(),
        "config": {
            "preset": args.preset,
            "threads": args.threads,
            "workers": args.workers,
            "batch_seconds": args.batch_seconds,
            "steps_per_round": steps,
            "rounds": rounds,
        },
        **result,
    }
    write_json(args.output, result)


def measure(system: AsrSystem, datamodule: AsrDataModule, steps: int, rounds: int) -> dict:
    model = system.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def model_step(feats, feat_lengths, batch: Batch) -> None:
        log_probs, out_lengths = model(feats, feat_lengths)
        ctc_loss(log_probs, out_lengths, batch.targets, batch.target_lengths).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    waits: list[float] = []  # seconds the training loop waited for the loader, per round

    def full_pipeline() -> list[Batch]:
        loader = iter(datamodule.train_dataloader())
        next(loader)  # worker start-up and the first batch: not timed
        seen, waited = [], 0.0
        for _ in range(steps):
            start = time.perf_counter()
            batch = next(loader)
            waited += time.perf_counter() - start
            model_step(*system.features(batch, augment=True), batch)
            seen.append(batch)
        waits.append(waited)
        return seen

    batches = full_pipeline()  # warm-up round; its batches are every round's batches
    features = [system.features(batch, augment=True) for batch in batches]
    audio = sum(float(b.wave_lengths.sum()) for b in batches) / SAMPLE_RATE
    modes = {
        "model_step": lambda: [model_step(*f, b) for f, b in zip(features, batches)],
        "frontend_and_model": lambda: [
            model_step(*system.features(b, augment=True), b) for b in batches
        ],
        "full_pipeline": full_pipeline,
    }
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(rounds):
        for name, run in modes.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
            print(f"round {r + 1}/{rounds} {name}: {audio / seconds[name][-1]:.1f} audio-s/s")
    rates = {name: [audio / s for s in times] for name, times in seconds.items()}
    result = {
        "audio_seconds_per_round": round(audio, 1),
        "batches_per_round": len(batches),
        "utterances_per_batch": round(sum(len(b) for b in batches) / len(batches), 1),
        "results": {
            name: {
                "audio_s_per_s": round(statistics.median(values), 2),
                "range": [round(min(values), 2), round(max(values), 2)],
            }
            for name, values in rates.items()
        },
    }
    # Noise-proof evidence: the time the loop spent blocked on the loader, of the round's time.
    result["full_pipeline_wait_fraction"] = round(
        statistics.median(w / s for w, s in zip(waits[1:], seconds["full_pipeline"])), 4
    )
    base = statistics.median(rates["model_step"])
    result["ratio_to_model_step"] = {
        name: round(statistics.median(values) / base, 3) for name, values in rates.items()
    }
    print(result["ratio_to_model_step"], "waiting for data:", result["full_pipeline_wait_fraction"])
    return result


if __name__ == "__main__":
    main()

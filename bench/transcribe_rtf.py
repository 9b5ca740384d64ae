"""End-to-end `asr transcribe` real-time factor and peak resident memory versus input length.

Each length runs in a fresh process (`asr transcribe`, greedy, 2 threads), so its peak RSS is
its own. The S-preset model has random weights: speed and memory do not depend on the values,
and a random model emits many tokens, which makes alignment no cheaper than a trained model's.

    .venv/bin/python bench/transcribe_rtf.py --lengths 10 600 3600 --output bench/results/transcribe.json
    .venv/bin/python bench/transcribe_rtf.py --quick    # 10 s and 60 s only, under a minute

About 1.5 min in all on 2 quiet cores (the 1-hour input is most of it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SCRIPT = """
import resource, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from asr.inference.transcribe import load_model
model = load_model(sys.argv[1])
start = time.perf_counter()
result = model.transcribe([sys.argv[2]])[0]
seconds = time.perf_counter() - start
assert result.error is None, result.error
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{seconds} {rss_mb} {len(result.words)}")
"""


def make_model(path: Path, preset: str) -> None:
    from asr.audio import LogMelFeatures
    from asr.checkpoint import save_bundle
    from asr.config import EncoderConfig, FeatureConfig
    from asr.model import CtcModel
    from asr.tokenizer import CharTokenizer

    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    model = CtcModel(EncoderConfig.preset(preset), tokenizer.vocab_size)
    save_bundle(path, model, LogMelFeatures(FeatureConfig()), tokenizer)


def make_audio(path: Path, seconds: float) -> None:
    """Speech-like noise (amplitude-modulated) written block by block as 16-bit WAV."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        for start in range(0, int(seconds), 60):
            n = int(min(60, seconds - start) * 16000)
            t = np.arange(n) / 16000
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
            f.write((0.2 * envelope * rng.standard_normal(n)).astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=float, nargs="+", default=[10, 600, 3600])
    parser.add_argument("--preset", default="s")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="bench/results/transcribe.json")
    parser.add_argument("--quick", action="store_true", help="only 10 s and 60 s inputs")
    args = parser.parse_args()
    if args.quick:
        args.lengths = [10, 60]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.pt"
        make_model(model, args.preset)
        for seconds in args.lengths:
            audio = Path(tmp) / f"{int(seconds)}s.wav"
            make_audio(audio, seconds)
            wall = time.perf_counter()
            run = subprocess.run(
                [sys.executable, "-c", SCRIPT, str(model), str(audio), str(args.threads)],
                capture_output=True, text=True, check=True,
                env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
            )  # fmt: skip
            total = time.perf_counter() - wall
            transcribe_s, rss_mb, words = run.stdout.split()
            rows.append(
                {
                    "audio_seconds": seconds,
                    "transcribe_seconds": round(float(transcribe_s), 2),
                    "rtf": round(float(transcribe_s) / seconds, 4),
                    "process_seconds": round(total, 2),
                    "peak_rss_mb": round(float(rss_mb)),
                    "words": int(words),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            audio.unlink()
    result = {
        "command": " ".join(["bench/transcribe_rtf.py", *sys.argv[1:]]),
        "preset": args.preset,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg(),
        "rows": rows,
        "children_peak_rss_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        ),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

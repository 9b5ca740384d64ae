"""PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8: accuracy, speed and memory.

    python bench/onnx_speed.py --model demo-synthetic-char \\
        --wer demo=/tmp/demo-stop/exp/model.pt:/tmp/demo-stop/corpus/test.jsonl \\
        --wer librispeech-mini=/tmp/real-speech/final-an4-defaults/exp/model.pt:/tmp/real-speech/split/test.jsonl

Accuracy (`--wer NAME=MODEL:MANIFEST`, any number): each model is exported to fp32 and int8
ONNX and the manifest is decoded greedily by all three backends through `asr evaluate`'s code
(`decode_and_score`), one WER/CER table.

Speed and memory (`--model`): files of 10 s, 10 min and 1 h made by concatenating the real
speech of librispeech-mini (its utterances over and over), transcribed by `Transcriber` (20 s
chunks, greedy) exactly as `asr transcribe` does. Every (backend, file) run is its own process,
so its peak resident memory (`ru_maxrss`, which includes the Python interpreter, torch and the
model) is its own (VmHWM); the backends run one after another within each round, so a noisy neighbour
slows them alike. Real-time factor = transcription seconds / audio seconds (model loading not
counted; it is reported apart). Writes JSON and prints the rows for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, set_threads, write_json

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "librispeech-mini" / "LibriSpeech"
BACKENDS = ("pytorch", "onnx-fp32", "onnx-int8")
RATE = 16000


def export_all(model: str, folder: Path) -> dict[str, str]:
    """{backend: model path}: the bundle itself and its fp32 and int8 ONNX exports."""
    from asr.export.onnx import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(model).stem
    paths = {"pytorch": model}
    for backend, quantize in (("onnx-fp32", "none"), ("onnx-int8", "int8")):
        out = folder / f"{stem}.{quantize}.onnx"
        began = time.perf_counter()
        export_onnx(model, out, quantize=quantize)
        print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB) in "
              f"{time.perf_counter() - began:.0f} s")  # fmt: skip
        paths[backend] = str(out)
    return paths


def make_long_files(folder: Path, durations: list[float]) -> dict[float, Path]:
    """WAV files of the given lengths: librispeech-mini's utterances one after another, looped."""
    utterances = sorted(SPEECH.rglob("*.flac"))
    if not utterances:
        raise SystemExit(f"no FLAC files under {SPEECH}")
    speech = np.concatenate([soundfile.read(p, dtype="float32")[0] for p in utterances])
    files = {}
    for seconds in durations:
        path = folder / f"speech_{int(seconds)}s.wav"
        if not path.is_file():
            n = round(seconds * RATE)
            reps = -(-n // len(speech))
            soundfile.write(path, np.tile(speech, reps)[:n], RATE, subtype="PCM_16")
        files[seconds] = path
    return files


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
    parent across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(model: str, audio: str, repeats: int, threads: int) -> None:
    """One process: load `model`, transcribe `audio` `repeats` times, print JSON timings."""
    set_threads(threads)
    import asr

    began = time.perf_counter()
    transcriber = asr.load_model(model)
    load_seconds = time.perf_counter() - began
    rss_loaded = peak_rss_mb()
    seconds, text = [], ""
    for _ in range(repeats):
        began = time.perf_counter()
        (result,) = transcriber.transcribe(audio)
        seconds.append(time.perf_counter() - began)
        assert result.error is None, result.error
        text = result.text
    print(json.dumps({
        "load_seconds": load_seconds, "seconds": seconds, "duration": result.duration,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_load_mb": rss_loaded, "words": len(text.split()),
    }))  # fmt: skip


def speed(paths: dict[str, str], files: dict[float, Path], rounds: int, threads: int) -> dict:
    results: dict = {}
    for seconds, audio in files.items():
        repeats = 5 if seconds <= 60 else 1  # short files: median of 5 in-process runs
        runs: dict[str, list[dict]] = {b: [] for b in paths}
        for _ in range(rounds if seconds <= 600 else 1):
            for backend, model in paths.items():
                out = subprocess.run(
                    [sys.executable, __file__, "--child", model, str(audio),
                     "--repeats", str(repeats), "--threads", str(threads)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                runs[backend].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for backend, done in runs.items():
            times = [t for run in done for t in (run["seconds"][1:] or run["seconds"])]
            median = statistics.median(times)
            results.setdefault(str(int(seconds)), {})[backend] = {
                "rtf": median / seconds,
                "rtf_min": min(times) / seconds,
                "rtf_max": max(times) / seconds,
                "seconds": median,
                "peak_rss_mb": max(run["peak_rss_mb"] for run in done),
                "rss_after_load_mb": max(run["rss_after_load_mb"] for run in done),
                "load_seconds": statistics.median(run["load_seconds"] for run in done),
                "words": done[0]["words"],
            }
            r = results[str(int(seconds))][backend]
            print(f"{int(seconds):>5} s  {backend:<10} RTF {r['rtf']:.4f} "
                  f"(x{1 / r['rtf']:.0f} real time)  peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    return results


def accuracy(name: str, model: str, manifest: str, folder: Path) -> dict:
    import asr
    from asr.scoring.evaluate import decode_and_score

    paths = export_all(model, folder / name)
    rows = {}
    for backend, path in paths.items():
        began = time.perf_counter()
        score = decode_and_score(asr.load_model(path), manifest, folder / name / backend,
                                 report=False)  # fmt: skip
        rows[backend] = {"wer": 100 * score.wer, "cer": 100 * score.cer,
                         "seconds": time.perf_counter() - began}  # fmt: skip
        print(f"{name:<18} {backend:<10} WER {rows[backend]['wer']:.2f}  "
              f"CER {rows[backend]['cer']:.2f}")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-synthetic-char",
                        help="bundle for the speed runs (file or shipped name)")  # fmt: skip
    parser.add_argument("--wer", action="append", default=[], metavar="NAME=MODEL:MANIFEST")
    parser.add_argument("--durations", default="10,600,3600", help="file lengths in seconds")
    parser.add_argument("--rounds", type=int, default=3, help="rounds for files up to 10 min")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/onnx-bench"))
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "onnx.json")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "AUDIO"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, repeats=args.repeats, threads=args.threads)
        return
    set_threads(args.threads)
    result: dict = {"machine": machine(), "command": " ".join(sys.argv), "accuracy": {}}
    for spec in args.wer:
        name, rest = spec.split("=", 1)
        model, manifest = rest.rsplit(":", 1)
        result["accuracy"][name] = accuracy(name, model, manifest, args.work_dir / "wer")
    paths = export_all(args.model, args.work_dir / "speed")
    durations = [float(d) for d in args.durations.split(",") if d]
    files = make_long_files(args.work_dir, durations)
    result["speed"] = speed(paths, files, args.rounds, args.threads)
    write_json(args.output, result)
    print(f"\n{result['machine']['cpu']}, {args.threads} threads, {result['machine']['date']}")
    for name, rows in result["accuracy"].items():
        cells = " | ".join(f"{rows[b]['wer']:.2f} / {rows[b]['cer']:.2f}" for b in BACKENDS)
        print(f"| {name} | {cells} |")
    for seconds, rows in result["speed"].items():
        base = rows["pytorch"]["rtf"]
        cells = " | ".join(
            f"{rows[b]['rtf']:.4f} (x{base / rows[b]['rtf']:.2f}), {rows[b]['peak_rss_mb']:.0f} MB"
            for b in BACKENDS
        )
        print(f"| {seconds} s | {cells} |")


if __name__ == "__main__":
    main()

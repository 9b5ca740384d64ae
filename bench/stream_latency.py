"""Live transcription cost per chunk size: PyTorch against ONNX Runtime fp32 and int8 streams.

    python bench/stream_latency.py --model /tmp/demo-stream/exp/model.pt \\
        [--audio a.flac ...] [--chunks-ms 320 640 1280] [--threads 1]

`--model` is a model.pt that can stream (trained with encoder.causal_conv); its ONNX exports
with the streaming graph (`asr export --format onnx --streaming`, fp32 and `--quantize int8`)
are written to `--work-dir` unless `--onnx`/`--onnx-int8` name them. The recordings are
`--audio`, or the first `--limit` of librispeech-mini's test-clean. Each recording is fed to a
`Stream` of each backend in `--piece-ms` pieces (what a microphone delivers), the backends in
turn per recording so that a busy neighbour slows them alike; nothing sleeps between pieces.

Reported per chunk size and backend:
  chunk_compute_ms   median and p90 of the compute time of a chunk: the `accept` calls that
                     completed chunks (front end, subsampling, encoder, greedy partial), per chunk
  rtf                compute seconds (every `accept` and `finish`) / audio seconds
  algorithmic_ms     how long after a word ends its chunk can run, at most (a word ending just
                     after a chunk starts) and on average: the chunk, the subsampling's
                     look-ahead and the last frame's window (`Stream.frame_seconds`)
  latency_p90_ms     algorithmic (at most) + p90 chunk compute: a word's worst-case delay
  same_text          share of recordings whose final text equals the PyTorch stream's

and, modelled for one stream fed in real time from the measured compute times (as a microphone
and a server with a core to itself would run it; `bench/live_load.py` measures it through the
server): piece k arrives when its last sample is spoken (t = its end in the audio), its `accept`
starts when it has arrived and the previous call is done and takes the time it took here, and
`finish` starts when the last piece is done and the audio is over. Word times are the PyTorch
model's offline transcription's (forced alignment), matched in order to the stream's final words.
  first_partial_ms   median/p90 over recordings: when the first partial with text is returned
                     - the first word's start
  final_ms           median/p90 over recordings: when `finish` returns - the end of the audio
  word_ms            median/p90 over words: when the first partial (or the final text) that
                     shows the word complete is returned - the word's end
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import first_shown, machine, percentiles, set_threads, word_ends, write_json

import asr
from asr.audio import load_audio
from asr.export.onnx import export_onnx
from asr.inference.onnx import streaming_path

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH = REPO.parent / "shared/data/librispeech-mini/LibriSpeech/test-clean"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def algorithmic_ms(stream) -> tuple[float, float]:
    """(at most, on average) ms between a word's end and the moment its chunk's audio is in."""
    frontend, geometry = stream.frontend, stream.geometry
    chunk_ms = 1000 * stream.chunk * stream.frame_seconds
    look_ahead = (geometry.span - 1 - geometry.stride) * frontend.hop + frontend.win  # samples
    extra_ms = 1000 * look_ahead / stream.rate
    return chunk_ms + extra_ms, chunk_ms / 2 + extra_ms


class Run(NamedTuple):
    """One recording through one stream: its final text, the compute seconds of each chunk,
    of everything, and per `accept` (audio seconds in after it, compute seconds, partial text),
    then of `finish`."""

    text: str
    per_chunk: list[float]
    compute: float
    stream: Any
    steps: list[tuple[float, float, str]]
    finish_s: float


def run_stream(transcriber, wave: np.ndarray, chunk_ms: float, left: float, piece_ms: float) -> Run:
    """One recording through one stream, each call timed."""
    stream = transcriber.stream(chunk_ms, left)
    rate = transcriber.sample_rate
    piece = max(1, round(piece_ms / 1000 * rate))
    per_chunk, steps = [], []
    for start in range(0, len(wave), piece):
        began = time.perf_counter()
        partial = stream.accept(wave[start : start + piece])
        seconds = time.perf_counter() - began
        steps.append((min(start + piece, len(wave)) / rate, seconds, partial.text))
        if partial.new_chunks:
            per_chunk += [seconds / partial.new_chunks] * partial.new_chunks
    began = time.perf_counter()
    result = stream.finish()
    finish_s = time.perf_counter() - began
    compute = sum(seconds for _, seconds, _ in steps) + finish_s
    return Run(result.text, per_chunk, compute, stream, steps, finish_s)


def realtime_latencies(run: Run, words: list[Any]) -> tuple[float | None, float, list[float]]:
    """(first partial after the onset, final after the end, per word after its end) in seconds,
    modelled for `run` fed in real time (module docstring); `words`: the offline word times."""
    done, partials = 0.0, []
    for arrived, seconds, text in run.steps:
        done = max(done, arrived) + seconds
        partials.append((done, text))
    audio_end = run.steps[-1][0] if run.steps else 0.0
    finished = max(done, audio_end) + run.finish_s
    partials.append((finished, run.text))
    first = next((at for at, text in partials if text.strip()), None)
    final_words = run.text.split()
    shown = first_shown(partials, final_words)
    per_word = [shown[k] - end for k, end in word_ends(words, final_words).items()
                if shown[k] is not None]  # fmt: skip
    onset = words[0].start if words else None
    first_partial = None if first is None or onset is None else first - onset
    return first_partial, finished - audio_end, per_word


def exports(args: argparse.Namespace) -> dict[str, str]:
    """The three backends' model files, exporting the ONNX ones where not given."""
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    files = {"pytorch": args.model}
    for name, given, quantize in (("onnx_fp32", args.onnx, "none"),
                                  ("onnx_int8", args.onnx_int8, "int8")):  # fmt: skip
        if given is None:
            given = work / f"model.{quantize}.onnx"
            if not (given.is_file() and streaming_path(given).is_file()):
                export_onnx(args.model, given, quantize, streaming=True)
        files[name] = str(given)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model.pt that can stream")
    parser.add_argument("--onnx", help="its fp32 ONNX export with --streaming (default: made)")
    parser.add_argument("--onnx-int8", help="its int8 ONNX export with --streaming")
    parser.add_argument("--work-dir", default="/tmp/stream_latency", help="where exports go")
    parser.add_argument("--audio", nargs="+", help="recordings (default: librispeech-mini)")
    parser.add_argument("--limit", type=int, default=20, help="recordings from the default set")
    parser.add_argument("--max-seconds", type=float, help="only the first seconds of each")
    parser.add_argument("--chunks-ms", type=float, nargs="+", default=[320.0, 640.0, 1280.0])
    parser.add_argument("--left-seconds", type=float, default=10.0)
    parser.add_argument("--piece-ms", type=float, default=100.0, help="audio per accept call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(REPO / "bench/results/stream_latency.json"))
    args = parser.parse_args()
    set_threads(args.threads)
    paths = args.audio or [str(p) for p in sorted(LIBRISPEECH.rglob("*.flac"))[: args.limit]]
    if not paths:
        sys.exit(f"no recordings: give --audio (nothing under {LIBRISPEECH})")
    files = exports(args)
    backends = {name: asr.load_model(path) for name, path in files.items()}
    rate = backends["pytorch"].sample_rate
    waves = [load_audio(p, rate, duration=args.max_seconds).numpy() for p in paths]
    audio_seconds = sum(len(w) for w in waves) / rate
    offline = [backends["pytorch"].transcribe((w, rate))[0].words for w in waves]
    results = []
    for chunk_ms in args.chunks_ms:
        per_chunk = {name: [] for name in backends}
        compute = dict.fromkeys(backends, 0.0)
        texts = {name: [] for name in backends}
        latencies = {name: ([], [], []) for name in backends}  # first partial, final, words
        algorithmic = None
        for wave, words in zip(waves, offline):
            for name, transcriber in backends.items():  # in turn: noise hits them alike
                run = run_stream(transcriber, wave, chunk_ms, args.left_seconds, args.piece_ms)
                per_chunk[name] += run.per_chunk
                compute[name] += run.compute
                texts[name].append(run.text)
                algorithmic = algorithmic_ms(run.stream)
                first, final, per_word = realtime_latencies(run, words)
                if first is not None:
                    latencies[name][0].append(first)
                latencies[name][1].append(final)
                latencies[name][2].extend(per_word)
        for name in backends:
            p90 = 1000 * percentile(per_chunk[name], 90)
            same = [a == b for a, b in zip(texts[name], texts["pytorch"])]
            row = {
                "chunk_ms": chunk_ms,
                "backend": name,
                "chunks": len(per_chunk[name]),
                "chunk_compute_ms": {
                    "median": round(1000 * statistics.median(per_chunk[name]), 2),
                    "p90": round(p90, 2),
                },
                "rtf": round(compute[name] / audio_seconds, 4),
                "algorithmic_ms": {
                    "max": round(algorithmic[0], 1),
                    "mean": round(algorithmic[1], 1),
                },
                "latency_p90_ms": round(algorithmic[0] + p90, 1),
                "same_text": round(sum(same) / len(same), 3),
                "first_partial_ms": percentiles(latencies[name][0]),
                "final_ms": percentiles(latencies[name][1]),
                "word_ms": percentiles(latencies[name][2]),
            }
            results.append(row)
            print(f"{chunk_ms:6.0f} ms {name:10s} chunk {row['chunk_compute_ms']['median']:7.2f}"
                  f"/{row['chunk_compute_ms']['p90']:7.2f} ms (median/p90)  RTF {row['rtf']:.4f}"
                  f"  latency p90 {row['latency_p90_ms']:7.1f} ms  same text "
                  f"{row['same_text']:.2f}  first partial {row['first_partial_ms']['median']} ms"
                  f"  final {row['final_ms']['median']} ms  word {row['word_ms']['median']}/"
                  f"{row['word_ms']['p90']} ms")  # fmt: skip
    write_json(args.output, {
        "command": " ".join(sys.argv),
        "machine": machine(),
        "models": files,
        "recordings": len(paths),
        "audio_seconds": round(audio_seconds, 2),
        "piece_ms": args.piece_ms,
        "left_seconds": args.left_seconds,
        "results": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()

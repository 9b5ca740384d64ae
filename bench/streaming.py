"""Streaming: accuracy against context, latency and real-time factor per chunk size, and the
training cost of dynamic chunk training.

    # the two models: the demo as it is (full context), and the demo trained with dynamic chunks
    asr demo --work-dir /tmp/demo-stop
    asr demo --work-dir /tmp/demo-stream encoder.causal_conv=true encoder.chunk_conv=false encoder.dynamic_chunk_training=true
    python bench/streaming.py --streaming-model /tmp/demo-stream/exp/model.pt \\
        --full-model /tmp/demo-stop/exp/model.pt --manifest /tmp/demo-stop/corpus/test.jsonl

Accuracy: greedy WER/CER of the test manifest at full context (offline `Transcriber`) for both
models, and for the streaming model at each `--chunks-ms` through `Stream` (the audio fed in
100 ms pieces, as a microphone gives it), left context `--left-seconds`; an entry C+R streams
chunks of C ms that also see R ms after them (`lookahead_ms`: a word then waits up to C + R).

Latency, per chunk size: the audio is fed in 10 ms pieces; a word is emitted when the partial
text first holds all its letters. Algorithmic latency = audio time received at that moment -
the word's end (from the final forced alignment); compute latency = the wall time of the
`accept` call that emitted it. Reported: median and 90th percentile over all test words, and
the real-time factor of the whole stream (compute seconds / audio seconds).

Training cost: one optimizer step of the demo's shape on the same real batch, plain vs causal
convolution + dynamic chunks, timed interleaved (`_common.interleave`) in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave, machine, set_threads, write_json

import asr
from asr.audio import load_audio
from asr.data.manifest import read_manifest
from asr.inference.streaming import feed
from asr.scoring.metrics import score as score_texts

REPO = Path(__file__).resolve().parents[1]


def score(refs: list[str], hyps: list[str]) -> dict[str, float]:
    ids = [str(i) for i in range(len(refs))]
    result = score_texts(dict(zip(ids, refs)), dict(zip(ids, hyps)), num_resamples=0)
    return {"wer": round(100 * result.wer, 2), "cer": round(100 * result.cer, 2)}


def offline_texts(model_path: str, utterances) -> list[str]:
    transcriber = asr.load_model(model_path)
    return [r.text for r in transcriber.transcribe([u.audio for u in utterances])]


def stream_utterance(transcriber, wave: np.ndarray, chunk_ms: float, left: float, piece_ms: float,
                     lookahead_ms: float = 0.0):  # fmt: skip
    """Feed `wave` in pieces: (final Result, [(received seconds, compute seconds, words)])."""
    stream = transcriber.stream(chunk_ms, left, lookahead_ms=lookahead_ms)
    events = []
    feed(stream, wave, transcriber.sample_rate, piece_ms,
         lambda partial, seconds: events.append((partial.received, seconds, partial.token_ids)))  # fmt: skip
    began = time.perf_counter()
    result = stream.finish()
    events.append((len(wave) / transcriber.sample_rate, time.perf_counter() - began, None))
    return result, stream, events


def latencies(result, stream, events) -> list[tuple[float, float]]:
    """(algorithmic, compute) latency of each final word that the partials emitted: the first
    partial whose text holds the word complete (a word follows it, or a space)."""
    tokenizer = stream.tokenizer
    out, k = [], 0
    for received, compute, token_ids in events:
        if token_ids is None or k >= len(result.words):
            break
        text = tokenizer.decode(token_ids)
        words = text.split()
        complete = len(words) if text.endswith(" ") else len(words) - 1
        while k < min(complete, len(result.words)):
            if words[k] == result.words[k].word:
                out.append((received - result.words[k].end, compute))
            k += 1
    return out


def streaming_rows(model_path: str, utterances, chunks_ms, left: float, timed: bool = True) -> dict:
    """Per (chunk_ms, lookahead_ms) of `chunks_ms`: WER/CER, and with `timed` the latency and
    RTF of the stream."""
    transcriber = asr.load_model(model_path)
    refs = [u.text for u in utterances]
    waves = [load_audio(u.audio).numpy() for u in utterances]
    rows = {}
    for chunk_ms, lookahead_ms in chunks_ms:
        hyps, lat, compute_total, audio_total = [], [], 0.0, 0.0
        for wave in waves:
            result, stream, events = stream_utterance(transcriber, wave, chunk_ms, left, 100.0,
                                                     lookahead_ms)  # fmt: skip
            hyps.append(result.text)
        name = f"{chunk_ms:g}" + (f"+{lookahead_ms:g}" if lookahead_ms else "")
        if not timed:
            rows[name] = score(refs, hyps)
            print(name, rows[name], flush=True)
            continue
        for wave in waves[:40]:  # latency: 10 ms pieces, the first 40 utterances
            result, stream, events = stream_utterance(transcriber, wave, chunk_ms, left, 10.0,
                                                     lookahead_ms)  # fmt: skip
            lat += latencies(result, stream, events)
            compute_total += sum(c for _, c, _ in events)
            audio_total += len(wave) / transcriber.sample_rate
        algo = [a for a, _ in lat]
        comp = [c for _, c in lat]
        rows[name] = {
            **score(refs, hyps),
            "latency_algorithmic_median_s": round(statistics.median(algo), 3),
            "latency_algorithmic_p90_s": round(float(np.percentile(algo, 90)), 3),
            "latency_compute_median_s": round(statistics.median(comp), 4),
            "latency_compute_p90_s": round(float(np.percentile(comp, 90)), 4),
            "rtf": round(compute_total / audio_total, 4),
            "words_timed": len(lat),
        }
        print(name, rows[name], flush=True)
    return rows


def step_cost(manifest: str, rounds: int) -> dict:
    """Seconds per training step: the demo's shape, plain vs causal + dynamic chunks."""
    from asr.audio import LogMelFeatures
    from asr.config import EncoderConfig, FeatureConfig
    from asr.model import CtcModel, ctc_objective
    from asr.tokenizer import CharTokenizer

    utterances = read_manifest(manifest)[:10]  # ~30 s of audio, the demo's batch size
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    frontend = LogMelFeatures(FeatureConfig())
    waves = [load_audio(u.audio) for u in utterances]
    feats, lengths = frontend(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True),
                              torch.tensor([len(w) for w in waves]))  # fmt: skip
    ids = [tokenizer.encode(u.text) for u in utterances]
    targets = torch.nn.utils.rnn.pad_sequence([torch.tensor(i) for i in ids], batch_first=True)
    target_lengths = torch.tensor([len(i) for i in ids])
    shape = dict(d_model=96, num_layers=6, num_heads=4, conv_kernel_size=15,
                 subsampling_channels=32, inter_ctc_layers=[3], self_conditioning=True)  # fmt: skip
    cases = {}
    for name, extra in (
        ("plain", {}),
        ("dynamic_chunks", dict(causal_conv=True, dynamic_chunk_training=True)),
    ):
        torch.manual_seed(0)
        model = CtcModel(EncoderConfig.preset("xs", **shape, **extra), tokenizer.vocab_size)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

        def step(model=model, optimizer=optimizer) -> None:
            loss, _ = ctc_objective(model, feats, lengths, targets, target_lengths, 0.3)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        cases[name] = step
    wall, _ = interleave(cases, repeats=rounds, warmup=2)
    medians = {name: statistics.median(times) for name, times in wall.items()}
    return {"seconds_per_step": medians, "ratio": medians["dynamic_chunks"] / medians["plain"],
            "batch_audio_seconds": float(sum(len(w) for w in waves) / 16000)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streaming-model", required=True)
    parser.add_argument("--full-model", required=True, help="the same recipe, full context only")
    parser.add_argument("--manifest", required=True, help="test set")
    parser.add_argument(
        "--chunks-ms",
        default="320,640,1280",
        help="chunk sizes, each C or C+R: R ms of look-ahead after each chunk",
    )
    parser.add_argument("--left-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the step-cost timing")
    parser.add_argument(
        "--accuracy-only",
        action="store_true",
        help="WER/CER only: no latency, no step cost (nothing timed)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "bench/results/streaming.json")
    args = parser.parse_args()
    set_threads(args.threads)
    utterances = read_manifest(args.manifest)
    refs = [u.text for u in utterances]
    result = {"machine": machine(), "command": " ".join(sys.argv)}
    result["full_context"] = {
        "full_context_model": score(refs, offline_texts(args.full_model, utterances)),
        "dynamic_chunk_model": score(refs, offline_texts(args.streaming_model, utterances)),
    }
    print(result["full_context"], flush=True)
    chunks = [(float(c.split("+")[0]), float(c.split("+")[1]) if "+" in c else 0.0)
              for c in args.chunks_ms.split(",")]  # fmt: skip
    result["streaming"] = streaming_rows(args.streaming_model, utterances, chunks,
                                         args.left_seconds, not args.accuracy_only)  # fmt: skip
    if not args.accuracy_only:
        result["step_cost"] = step_cost(args.manifest, args.rounds)
        print(result["step_cost"])
    write_json(args.output, result)


if __name__ == "__main__":
    main()

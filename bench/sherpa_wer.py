"""sherpa-onnx against our own decoding of one trained model: WER/CER and speed on real speech.

    # a model trained with the front end sherpa-onnx computes (here: streaming-capable too)
    python bench/real_speech.py --config configs/an4.yaml --minutes 10 --name sherpa-fe \\
        init_from=demo-synthetic-char-streaming tokenizer.path=/tmp/real-speech/split/tokenizer_char.json \\
        encoder.causal_conv=true encoder.chunk_conv=false encoder.dynamic_chunk_training=true features.normalize=running \\
        features.framing=kaldi features.preemphasis=0.97 features.mel_scale=slaney \\
        features.log_guard=clamp features.log_offset=1.1920928955078125e-07
    python bench/sherpa_wer.py --model /tmp/real-speech/sherpa-fe/exp/model.pt \\
        --manifest /tmp/real-speech/split/test.jsonl

Offline: the model exported by `asr export --format sherpa-onnx` (fp32 and int8), every test
recording decoded by sherpa-onnx's `OfflineRecognizer.from_nemo_ctc` one at a time, against
`asr.load_model(model).transcribe` (PyTorch, greedy). Live (a model that can stream): exported
with `--streaming --chunk-ms C --left-seconds L`, fed to sherpa-onnx's `OnlineRecognizer` in
100 ms pieces (then the silence that makes it run its last window), against our `Stream` at the
same chunk and left context fed the same pieces. Both sides are scored by the same normalizer
(`asr.scoring.metrics.score`); the seconds are the decoding's wall time over the whole set on
`--threads` threads (sherpa-onnx's num_threads), after one untimed warm-up utterance for ours,
so RTF compares the two runtimes in one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, set_threads, write_json

import asr
from asr.audio import load_audio
from asr.cli import main as asr_main
from asr.data.manifest import read_manifest
from asr.inference.streaming import check_streamable, feed
from asr.scoring.metrics import score as score_texts

REPO = Path(__file__).resolve().parents[1]
PIECE_MS = 100.0


def score(refs: list[str], hyps: list[str], seconds: float, audio_s: float) -> dict:
    ids = [str(i) for i in range(len(refs))]
    result = score_texts(dict(zip(ids, refs)), dict(zip(ids, hyps)), num_resamples=0)
    return {"wer": round(100 * result.wer, 2), "cer": round(100 * result.cer, 2),
            "seconds": round(seconds, 2), "rtf": round(seconds / audio_s, 4)}  # fmt: skip


def export(model: Path, output: Path, *flags: str) -> Path:
    argv = ["export", "--model", str(model), "--format", "sherpa-onnx", "--quantize", "int8"]
    if asr_main([*argv, *flags, "--output", str(output)]) != 0:
        raise SystemExit(f"asr export {' '.join(flags)} failed for {model}")
    return output


def sherpa_offline(graph: Path, waves: list[np.ndarray], threads: int) -> tuple[list[str], float]:
    import sherpa_onnx

    recognizer = sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
        model=str(graph), tokens=str(graph.parent / "tokens.txt"), num_threads=threads
    )
    texts, began = [], time.perf_counter()
    for wave in waves:
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, wave)
        recognizer.decode_stream(stream)
        texts.append(" ".join(stream.result.text.split()))
    return texts, time.perf_counter() - began


def sherpa_online(graph: Path, waves: list[np.ndarray], threads: int) -> tuple[list[str], float]:
    """Each wave fed in 100 ms pieces, decoded whenever a window is ready; then the silence of
    one window and one shift (sherpa-onnx runs full windows only) and input_finished."""
    import onnx
    import sherpa_onnx

    meta = {p.key: p.value for p in onnx.load(str(graph), load_external_data=False).metadata_props}
    tail = np.zeros((int(meta["window_size"]) + int(meta["chunk_shift"])) * 160, np.float32)
    recognizer = sherpa_onnx.OnlineRecognizer.from_nemo_ctc(
        model=str(graph), tokens=str(graph.parent / "tokens.txt"), num_threads=threads
    )
    piece = int(16000 * PIECE_MS / 1000)
    texts, began = [], time.perf_counter()
    for wave in waves:
        stream = recognizer.create_stream()
        for start in range(0, len(wave), piece):
            stream.accept_waveform(16000, wave[start : start + piece])
            while recognizer.is_ready(stream):
                recognizer.decode_stream(stream)
        stream.accept_waveform(16000, tail)
        stream.input_finished()
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
        texts.append(" ".join(recognizer.get_result(stream).split()))
    return texts, time.perf_counter() - began


def ours_online(transcriber, waves: list[np.ndarray], chunk_ms: float, left: float):
    texts, began = [], time.perf_counter()
    for wave in waves:
        stream = transcriber.stream(chunk_ms, left)
        feed(stream, wave, 16000, PIECE_MS, lambda partial, seconds: None)
        texts.append(" ".join(stream.finish().text.split()))
    return texts, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="a bundle with sherpa's front end"
    )
    parser.add_argument("--manifest", type=Path, required=True, help="test set")
    parser.add_argument("--chunk-ms", type=float, default=640.0)
    parser.add_argument("--left-seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/sherpa-wer"))
    parser.add_argument("--output", type=Path, default=REPO / "bench/results/sherpa_wer.json")
    args = parser.parse_args()
    set_threads(args.threads)

    try:  # a missing or unreadable model or manifest: one line, not a traceback
        transcriber = asr.load_model(str(args.model))
        utterances = read_manifest(args.manifest)
    except (OSError, ValueError) as err:
        raise SystemExit(f"bench/sherpa_wer.py: {err}") from None
    refs = [u.text for u in utterances]
    waves = [load_audio(u.audio).numpy() for u in utterances]
    audio_s = sum(len(w) for w in waves) / 16000
    rows: dict[str, dict] = {}

    transcriber.transcribe([utterances[0].audio])  # warm-up (first-call set-up), untimed
    began = time.perf_counter()
    hyps = [r.text for r in transcriber.transcribe([u.audio for u in utterances])]
    rows["ours offline (PyTorch)"] = score(refs, hyps, time.perf_counter() - began, audio_s)
    graph = export(args.model, args.work_dir / "offline" / "model.onnx")
    for name, path in (("fp32", graph), ("int8", graph.with_name("model.int8.onnx"))):
        texts, seconds = sherpa_offline(path, waves, args.threads)
        rows[f"sherpa-onnx offline {name}"] = score(refs, texts, seconds, audio_s)
        rows[f"sherpa-onnx offline {name}"]["same_text_as_ours"] = sum(
            a == b for a, b in zip(texts, hyps)
        )

    bundle = transcriber.bundle
    try:
        check_streamable(bundle.model.config, bundle.frontend.config)
        can_stream = True
    except ValueError as why:
        print(f"offline only: {why}")
        can_stream = False
    if can_stream:
        live = f"{args.chunk_ms:g} ms chunks, left {args.left_seconds:g} s"
        ours_online(transcriber, waves[:1], args.chunk_ms, args.left_seconds)  # warm-up
        ours, seconds = ours_online(transcriber, waves, args.chunk_ms, args.left_seconds)
        rows[f"ours live (PyTorch Stream), {live}"] = score(refs, ours, seconds, audio_s)
        flags = ["--streaming", "--chunk-ms", str(args.chunk_ms), "--left-seconds",
                 str(args.left_seconds)]  # fmt: skip
        graph = export(args.model, args.work_dir / "online" / "model.onnx", *flags)
        for name, path in (("fp32", graph), ("int8", graph.with_name("model.int8.onnx"))):
            texts, seconds = sherpa_online(path, waves, args.threads)
            key = f"sherpa-onnx online {name}, {live}"
            rows[key] = score(refs, texts, seconds, audio_s)
            rows[key]["same_text_as_ours"] = sum(a == b for a, b in zip(texts, ours))

    for name, row in rows.items():
        print(f"| {name} | {row['wer']} / {row['cer']} | {row['rtf']} |"
              f" {row.get('same_text_as_ours', '-')} |")  # fmt: skip
    write_json(args.output, {"machine": machine(), "command": " ".join(sys.argv),
                             "utterances": len(refs), "audio_s": round(audio_s, 1), "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()

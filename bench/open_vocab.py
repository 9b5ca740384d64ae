"""Open-vocabulary decoding of one trained model: each LM technique tuned on validation, scored
on test, beside pocketsphinx decoding the same test set with its own English models.

    python bench/open_vocab.py --model exp/model.pt --val val.jsonl --test test.jsonl \\
        --train train.jsonl --name librispeech-3h

Techniques (`asr.recipe` builds each LM from the training manifest, in <work-dir>/<name>/lm):
    greedy        no LM
    closed        word 3-gram of the training transcripts + the lexicon of its words
    english       pocketsphinx's US English 3-gram (72k words) + the lexicon of its words
    interpolated  the two interpolated (--weight for the transcripts) + the union's lexicon
    tokens        lexicon-free beam search with a token n-gram of the transcripts (interpolated
                  with --english-words running words of English text when > 0)
Each LM's weight and word score are chosen on --val (`asr.scoring.tune.tune_lm`, greedy when
the LM does not beat it there), then test WER/CER are measured with the chosen values. The
baseline is pocketsphinx 5 (its en-us acoustic model, CMUdict and the same 3-gram) on the test
audio at 16 kHz, its text normalized as ours (`asr.text.normalize_text`): WER, CER and its
real-time factor. Writes bench/results/open_vocab_<name>.json. Needs 'asr[english]'.

--limit N keeps the first N utterances of val and test (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr import recipe
from asr.audio import load_audio
from asr.data.manifest import read_manifest, write_manifest
from asr.inference.options import DEFAULT_LM_BEAM, LEXICON_FREE, DecodingOptions
from asr.inference.transcribe import Transcriber, load_model
from asr.scoring.evaluate import decode_and_score
from asr.scoring.metrics import ErrorCounts, count_char_errors, count_word_errors
from asr.scoring.tune import LmGrid, tune_lm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json

RESULTS = Path(__file__).resolve().parent / "results"
TECHNIQUES = ("greedy", "closed", "english", "interpolated", "tokens")


def limited(manifest: Path, limit: int | None, out: Path) -> Path:
    """`manifest`, or a copy of its first `limit` utterances."""
    if not limit:
        return manifest
    write_manifest(read_manifest(manifest)[:limit], out)
    return out


def build_lms(args: argparse.Namespace, lm_dir: Path) -> dict[str, tuple[DecodingOptions, float]]:
    """Each technique's decoding options (before tuning) and the seconds its LM took to build."""
    built = {}
    beam = args.beam_size
    for name in args.techniques:
        began = time.perf_counter()
        if name == "greedy":
            options = DecodingOptions()
        elif name == "closed":
            arpa, lexicon = recipe.build_word_lm(args.train, args.model, lm_dir)
            options = DecodingOptions(beam, str(arpa), str(lexicon))
        elif name == "english":
            arpa, lexicon = recipe.build_english_lm(args.model, lm_dir)
            options = DecodingOptions(beam, str(arpa), str(lexicon))
        elif name == "interpolated":
            arpa, lexicon = recipe.build_open_vocab_lm(args.train, args.model, lm_dir,
                                                       weight=args.weight)  # fmt: skip
            options = DecodingOptions(beam, str(arpa), str(lexicon))
        else:
            arpa = recipe.build_token_lm(args.train, args.model, lm_dir, args.token_order,
                                         args.english_words, args.weight)  # fmt: skip
            options = DecodingOptions(beam, str(arpa), LEXICON_FREE)
        built[name] = (options, round(time.perf_counter() - began, 1))
    return built


def score_technique(
    model: Transcriber, options: DecodingOptions, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """Tune on val (LM techniques), then decode and score test with the chosen options."""
    row: dict[str, Any] = {}
    chosen = options
    out.mkdir(parents=True, exist_ok=True)
    if not options.greedy:
        tuned = tune_lm(model, args.val, options, args.grid)
        tuned.write(out / "tuned.json", model=str(args.model))
        chosen = tuned.chosen
        row.update({"lm": options.lm, "lexicon": options.lexicon,
                    "lm_beats_greedy_on_val": tuned.lm_beats_greedy,
                    "lm_weight": tuned.best.lm_weight, "word_score": tuned.best.word_score,
                    "val_wer": round(100 * tuned.best.wer, 2),
                    "greedy_val_wer": round(100 * tuned.greedy.error_rate, 2),
                    "tune_seconds": tuned.seconds})  # fmt: skip
    began = time.perf_counter()
    result = decode_and_score(model, args.test, out / "test", chosen, report=False,
                              num_resamples=1)  # fmt: skip
    row.update({"decoding": "greedy" if chosen.greedy else "lm",
                "test_wer": round(100 * result.wer, 2), "test_cer": round(100 * result.cer, 2),
                "test_seconds": round(time.perf_counter() - began, 1)})  # fmt: skip
    return row


def pocketsphinx_baseline(test: Path, out: Path) -> dict[str, Any]:
    """pocketsphinx's default US English decoder on each test utterance (16 kHz, int16)."""
    import pocketsphinx

    pocketsphinx.set_loglevel("ERROR")
    decoder = pocketsphinx.Decoder()
    words, chars, seconds, audio = ErrorCounts(), ErrorCounts(), 0.0, 0.0
    out.mkdir(parents=True, exist_ok=True)
    with (out / "transcripts.jsonl").open("w", encoding="utf-8") as f:
        for utt in read_manifest(test):
            wave = load_audio(utt.audio, 16000, utt.offset, utt.duration).numpy()
            pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes()
            began = time.perf_counter()
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hypothesis = decoder.hyp()
            seconds += time.perf_counter() - began
            audio += len(wave) / 16000
            text = hypothesis.hypstr if hypothesis is not None else ""
            words += count_word_errors(utt.text, text)
            chars += count_char_errors(utt.text, text)
            f.write(json.dumps({"id": utt.id, "text": text}) + "\n")
    return {"test_wer": round(100 * words.error_rate, 2), "test_cer": round(100 * chars.error_rate, 2),
            "rtf": round(seconds / audio, 3), "audio_seconds": round(audio, 1),
            "version": pocketsphinx_version()}  # fmt: skip


def pocketsphinx_version() -> str:
    from importlib.metadata import version

    return version("pocketsphinx")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a trained model bundle")
    parser.add_argument("--val", type=Path, required=True, help="manifest the LMs are tuned on")
    parser.add_argument("--test", type=Path, required=True, help="manifest scored")
    parser.add_argument("--train", type=Path, required=True, help="the model's training manifest")
    parser.add_argument("--name", default="run", help="results: open_vocab_<name>.json")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/open-vocab"))
    parser.add_argument("--techniques", nargs="+", choices=TECHNIQUES, default=list(TECHNIQUES))
    parser.add_argument("--no-pocketsphinx", action="store_true", help="skip the baseline")
    parser.add_argument("--weight", type=float, default=0.5,
                        help="interpolation weight of the training transcripts' n-gram")  # fmt: skip
    parser.add_argument("--token-order", type=int, default=6)
    parser.add_argument("--english-words", type=int, default=100_000,
                        help="running words of English in the token LM (0: transcripts only)")  # fmt: skip
    parser.add_argument("--beam-size", type=int, default=DEFAULT_LM_BEAM)
    parser.add_argument("--lm-weights", type=float, nargs="+", default=list(LmGrid.lm_weights))
    parser.add_argument("--word-scores", type=float, nargs="+", default=list(LmGrid.word_scores))
    parser.add_argument("--limit", type=int, help="first N utterances of val and test only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = args.work_dir / args.name
    args.val = limited(args.val, args.limit, run_dir / "val.jsonl")
    args.test = limited(args.test, args.limit, run_dir / "test.jsonl")
    args.grid = LmGrid(tuple(args.lm_weights), tuple(args.word_scores))
    built = build_lms(args, run_dir / "lm")
    model = load_model(args.model)
    rows = {}
    for name, (options, build_seconds) in built.items():
        rows[name] = {**score_technique(model, options, args, run_dir / name),
                      "build_seconds": build_seconds}  # fmt: skip
        print(name, json.dumps(rows[name]), flush=True)
    if not args.no_pocketsphinx:
        rows["pocketsphinx"] = pocketsphinx_baseline(args.test, run_dir / "pocketsphinx")
        print("pocketsphinx", json.dumps(rows["pocketsphinx"]), flush=True)
    command = " ".join(["python bench/open_vocab.py", *sys.argv[1:]])
    result = {"name": args.name, "command": command, **machine(), "model": str(args.model),
              "val": str(args.val), "test": str(args.test), "train": str(args.train),
              "utterances": {"val": len(read_manifest(args.val)),
                             "test": len(read_manifest(args.test))},
              "grid": {"lm_weights": args.lm_weights, "word_scores": args.word_scores},
              "beam_size": args.beam_size, "interpolation_weight": args.weight,
              "token_order": args.token_order, "english_words": args.english_words,
              "techniques": rows}  # fmt: skip
    write_json(RESULTS / f"open_vocab_{args.name}.json", result)
    print("| technique | test WER / CER | val WER (greedy) | lm_weight, word_score |")
    for name, row in rows.items():
        tuned = f"{row['lm_weight']:g}, {row['word_score']:g}" if "lm_weight" in row else "-"
        val = f"{row['val_wer']} ({row['greedy_val_wer']})" if "val_wer" in row else "-"
        print(f"| {name} | {row['test_wer']} / {row['test_cer']} | {val} | {tuned} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

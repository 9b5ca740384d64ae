"""`asr evaluate`: score a model on a manifest, or any system's hypotheses against references.

    asr evaluate --model model.pt --manifest test.jsonl --output-dir eval/   # transcribe + score
    asr evaluate --hyp hyp.txt --ref ref.txt --output-dir eval/             # score only
    ... --compare other_eval/                                                # paired bootstrap
    asr evaluate --model model.pt --manifest test.jsonl --lm lm.arpa --tune-lm val.jsonl
    asr evaluate --model model.pt --manifest test.jsonl --streaming        # scored live

Both paths go through `asr.scoring.evaluate.evaluate_files`, so the numbers are computed one way
only; with --model the corpus is decoded by `asr.scoring.evaluate.decode_and_score` (the engine,
the chunking and decoding flags of `asr transcribe`; the path the demo and the recipes use), into
OUTPUT_DIR/transcripts.jsonl, the schema `asr transcribe --manifest` writes. With --tune-lm the
LM weight and word score are first chosen on a validation corpus (`asr.scoring.tune`), written
next to the LM (LM.tuned.json) and used for --manifest; greedy decoding is used instead, and
said so, when the LM does not beat greedy on the validation corpus. With --streaming each
utterance is transcribed live, as `asr transcribe --streaming` does (fed in --piece-ms pieces to
a stream of --chunk-ms chunks with --lookahead-ms of look-ahead): the WER a live user gets.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from asr.cli.options import (
    add_chunking_arguments,
    add_decoding_arguments,
    add_device_argument,
    add_streaming_arguments,
    chunking_options,
    decoding_options,
    streaming_options,
)
from asr.text import TextNormalizer

if TYPE_CHECKING:
    from asr.inference.options import ChunkingOptions, DecodingOptions
    from asr.inference.transcribe import Transcriber


def float_list(value: str) -> tuple[float, ...]:
    """`0,0.5,1` -> (0.0, 0.5, 1.0) (argparse's `type`)."""
    try:
        values = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {value!r}"
        ) from None
    return values


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_argument_group(
        "what to score (either --model and --manifest, or --hyp and --ref)"
    )
    source.add_argument("--model",
                        help="model bundle (model.pt), a shipped model's name, a NeMo .nemo "
                        "file, hf://OWNER/REPO or an exported .onnx file, to transcribe "
                        "--manifest with")  # fmt: skip
    source.add_argument("--manifest", metavar="CORPUS",
                        help="the audio and reference texts: a JSONL manifest, a folder (or "
                        "fsspec URL) written by `asr pack`, or a Hugging Face dataset")  # fmt: skip
    source.add_argument("--split", help="the split of a packed folder or dataset")
    source.add_argument("--hyp", help="hypotheses: Kaldi-style 'id text' lines or JSONL")
    source.add_argument("--ref", help="references: Kaldi-style 'id text' lines or a manifest")
    p.add_argument("--output-dir",
                   help="write summary.json, utterances.jsonl, worst.txt, report.html (and with "
                   "--model, transcripts.jsonl)")  # fmt: skip
    p.add_argument(
        "--compare", help="an earlier --output-dir (or its utterances.jsonl): paired bootstrap"
    )
    p.add_argument("--worst", type=int, default=20, help="how many worst utterances to list")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--keep-case", action="store_true", help="score case-sensitively")
    p.add_argument("--keep-punctuation", action="store_true", help="score punctuation too")
    add_device_argument(p)
    p.add_argument("--streaming", action="store_true",
                   help="with --model: transcribe each utterance as a live stream (a model "
                   "trained with chunk_conv or causal_conv), not in offline windows")  # fmt: skip
    add_chunking_arguments(p)
    add_streaming_arguments(p, "streaming (with --streaming, instead of chunking)", True)
    add_decoding_arguments(p)
    tune = p.add_argument_group("choosing --lm-weight and --word-score on a validation corpus")
    tune.add_argument("--tune-lm", metavar="VALIDATION",
                      help="decode this corpus greedily and with --lm at every point of the grid "
                      "(one acoustic pass), write the best point to LM.tuned.json and evaluate "
                      "--manifest with it, or greedily when the LM does not beat greedy here; "
                      "--lm-weight and --word-score are then chosen, not taken")  # fmt: skip
    tune.add_argument(
        "--tune-lm-output",
        metavar="JSON",
        help="where to write the choice (default: LM.tuned.json, next to --lm)",
    )
    tune.add_argument("--tune-lm-weights", type=float_list, metavar="W,W,...",
                      help="the LM weights searched (default 0,0.25,0.5,1,1.5,2)")  # fmt: skip
    tune.add_argument("--tune-word-scores", type=float_list, metavar="S,S,...",
                      help="the word scores searched (default -1,0,1,2; a list that starts "
                      "with a negative one goes after '=': --tune-word-scores=-2,0,2)")  # fmt: skip
    tune.add_argument(
        "--tune-beam-thresholds",
        type=float_list,
        metavar="T,T,...",
        help="the beam thresholds searched (default: --beam-threshold only)",
    )
    tune.add_argument("--tune-lm-extend", type=int, metavar="N",
                      help="where the best point lies on the grid's outer edge, step past that "
                      "edge up to N times (default 2; 0: the grid as given)")  # fmt: skip


def evaluate_command(args: argparse.Namespace) -> int:
    from asr.scoring.evaluate import decode_and_score, evaluate_files, format_summary

    normalizer = TextNormalizer(
        lowercase=not args.keep_case, remove_punctuation=not args.keep_punctuation
    )
    if args.model or args.manifest:
        if not (args.model and args.manifest):
            raise ValueError("--model and --manifest go together")
        if args.hyp or args.ref:
            raise ValueError("give either --model/--manifest or --hyp/--ref, not both")
    elif not (args.hyp and args.ref):
        raise ValueError("nothing to score: give --model and --manifest, or --hyp and --ref")
    if args.tune_lm and not (args.model and args.lm):
        raise ValueError("--tune-lm needs --model, --manifest and the --lm to tune")
    if args.tune_lm_output and not args.tune_lm:
        raise ValueError("--tune-lm-output goes with --tune-lm")
    if args.streaming and not args.model:
        raise ValueError("--streaming goes with --model and --manifest")
    scoring = dict(compare_path=args.compare, normalizer=normalizer,
                   num_resamples=args.resamples, worst_n=args.worst)  # fmt: skip
    if args.model:
        from asr.inference.transcribe import load_model

        options, chunking = decoding_options(args), chunking_options(args)
        model = load_model(args.model, device=args.device)
        if args.tune_lm:
            options = tune_lm_weights(model, options, chunking, normalizer, args)
        output_dir = args.output_dir or tempfile.mkdtemp()  # transcripts only, without one
        streaming = streaming_options(args) if args.streaming else None
        result = decode_and_score(model, args.manifest, output_dir, options, chunking=chunking,
                                  streaming=streaming, split=args.split,
                                  label="streaming" if streaming else "transcribing",
                                  report=bool(args.output_dir), **scoring)  # fmt: skip
    else:
        result = evaluate_files(args.hyp, args.ref, output_dir=args.output_dir, **scoring)
    print(format_summary(result))
    if args.output_dir:
        print(f"report: {Path(args.output_dir) / 'report.html'}")
    return 0


def tune_lm_weights(
    model: Transcriber,
    options: DecodingOptions,
    chunking: ChunkingOptions,
    normalizer: TextNormalizer,
    args: argparse.Namespace,
) -> DecodingOptions:
    """`--tune-lm`: the grid's table and choice printed, LM.tuned.json written; the decoding
    chosen (`asr.scoring.tune.TuneResult.chosen`)."""
    from asr.scoring.tune import LmGrid, format_grid, tune_lm

    if Path(args.tune_lm).resolve() == Path(args.manifest).resolve():
        print("asr: warning: --tune-lm is --manifest: tuned on the test set, its WER is "
              "optimistic", file=sys.stderr, flush=True)  # fmt: skip
    defaults = LmGrid()
    extend = defaults.extend if args.tune_lm_extend is None else args.tune_lm_extend
    grid = LmGrid(args.tune_lm_weights or defaults.lm_weights,
                  args.tune_word_scores or defaults.word_scores,
                  args.tune_beam_thresholds, extend)  # fmt: skip
    result = tune_lm(model, args.tune_lm, options, grid, chunking=chunking,
                     normalizer=normalizer, label="tuning")  # fmt: skip
    print(format_grid(result))
    print(f"written: {result.write(args.tune_lm_output, model=args.model)}")
    if not result.lm_beats_greedy:
        print(f"evaluating {args.manifest} with greedy decoding: the LM does not beat it on "
              f"{args.tune_lm}")  # fmt: skip
    return result.chosen

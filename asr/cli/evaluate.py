"""`asr evaluate`: score a model on a manifest, or any system's hypotheses against references.

    asr evaluate --model model.pt --manifest test.jsonl --output-dir eval/   # transcribe + score
    asr evaluate --hyp hyp.txt --ref ref.txt --output-dir eval/             # score only
    ... --compare other_eval/                                                # paired bootstrap

Both paths go through `asr.scoring.evaluate.evaluate_files`, so the numbers are computed one way
only; with --model the manifest is decoded by `asr.scoring.evaluate.decode_and_score`, the path
the demo and the recipes use.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from asr.cli.decoding import add_decoding_arguments, decoding_options
from asr.inference.transcribe import DEFAULT_BATCH_SECONDS
from asr.text import TextNormalizer


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_argument_group(
        "what to score (either --model and --manifest, or --hyp and --ref)"
    )
    source.add_argument("--model", help="model bundle (model.pt) to transcribe --manifest with")
    source.add_argument("--manifest", help="JSONL manifest with the audio and reference texts")
    source.add_argument("--hyp", help="hypotheses: Kaldi-style 'id text' lines or JSONL")
    source.add_argument("--ref", help="references: Kaldi-style 'id text' lines or a manifest")
    p.add_argument(
        "--output-dir", help="write summary.json, utterances.jsonl, worst.txt, report.html"
    )
    p.add_argument(
        "--compare", help="an earlier --output-dir (or its utterances.jsonl): paired bootstrap"
    )
    p.add_argument("--worst", type=int, default=20, help="how many worst utterances to list")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--keep-case", action="store_true", help="score case-sensitively")
    p.add_argument("--keep-punctuation", action="store_true", help="score punctuation too")
    p.add_argument("--batch-seconds", type=float, default=DEFAULT_BATCH_SECONDS,
                   help="padded audio per forward pass, with --model (default %(default)s)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="with --model: cpu, cuda or auto")
    add_decoding_arguments(p)


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
    scoring = dict(compare_path=args.compare, normalizer=normalizer,
                   num_resamples=args.resamples, worst_n=args.worst)  # fmt: skip
    if args.model:
        from asr.inference.transcribe import load_model

        options = decoding_options(args)
        model = load_model(args.model, device=args.device)
        output_dir = args.output_dir or tempfile.mkdtemp()  # hypotheses only, without one
        result = decode_and_score(model, args.manifest, output_dir, options,
                                  batch_seconds=args.batch_seconds,
                                  report=bool(args.output_dir), **scoring)  # fmt: skip
    else:
        result = evaluate_files(args.hyp, args.ref, output_dir=args.output_dir, **scoring)
    print(format_summary(result))
    if args.output_dir:
        print(f"report: {Path(args.output_dir) / 'report.html'}")
    return 0

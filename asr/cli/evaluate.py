"""`asr evaluate`: score a model on a manifest, or any system's hypotheses against references.

    asr evaluate --model model.pt --manifest test.jsonl --output-dir eval/   # transcribe + score
    asr evaluate --hyp hyp.txt --ref ref.txt --output-dir eval/             # score only
    ... --compare other_eval/                                                # paired bootstrap

Both paths go through `asr.scoring.evaluate.evaluate_files`, so the numbers are computed one way
only; with --model the corpus is decoded by `asr.scoring.evaluate.decode_and_score` (the engine,
the chunking and decoding flags of `asr transcribe`; the path the demo and the recipes use), into
OUTPUT_DIR/transcripts.jsonl, the schema `asr transcribe --manifest` writes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from asr.cli.options import (
    add_chunking_arguments,
    add_decoding_arguments,
    add_device_argument,
    chunking_options,
    decoding_options,
)
from asr.text import TextNormalizer


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
    add_chunking_arguments(p)
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

        options, chunking = decoding_options(args), chunking_options(args)
        model = load_model(args.model, device=args.device)
        output_dir = args.output_dir or tempfile.mkdtemp()  # transcripts only, without one
        result = decode_and_score(model, args.manifest, output_dir, options, chunking=chunking,
                                  split=args.split, label="transcribing",
                                  report=bool(args.output_dir), **scoring)  # fmt: skip
    else:
        result = evaluate_files(args.hyp, args.ref, output_dir=args.output_dir, **scoring)
    print(format_summary(result))
    if args.output_dir:
        print(f"report: {Path(args.output_dir) / 'report.html'}")
    return 0

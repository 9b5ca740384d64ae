"""`asr evaluate`: score a model on a manifest, or any system's hypotheses against references.

    asr evaluate --model model.pt --manifest test.jsonl --output-dir eval/   # transcribe + score
    asr evaluate --hyp hyp.txt --ref ref.txt --output-dir eval/             # score only
    ... --compare other_eval/                                                # paired bootstrap

Both paths go through `asr.evaluate.evaluate_files`, so the numbers are computed one way only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

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
    decode = p.add_argument_group("decoding (with --model)")
    decode.add_argument("--beam-size", type=int, default=1, help="1: greedy CTC")
    decode.add_argument("--lm", help="KenLM n-gram model, ARPA or binary")
    decode.add_argument("--lexicon", help="lexicon file: 'word token token ...' lines")
    decode.add_argument("--lm-weight", type=float, default=0.5)
    decode.add_argument("--word-score", type=float, default=0.0)
    decode.add_argument("--batch-seconds", type=float, default=120.0)
    decode.add_argument("--device", default="cpu")


def evaluate_command(args: argparse.Namespace) -> int:
    from asr.evaluate import evaluate_files, format_summary

    normalizer = TextNormalizer(
        lowercase=not args.keep_case, remove_punctuation=not args.keep_punctuation
    )
    if args.model or args.manifest:
        if not (args.model and args.manifest):
            raise ValueError("--model and --manifest go together")
        if args.hyp or args.ref:
            raise ValueError("give either --model/--manifest or --hyp/--ref, not both")
        output_dir = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp())
        hyp_path = transcribe_manifest(args, output_dir)
        ref_path = Path(args.manifest)
    elif args.hyp and args.ref:
        hyp_path, ref_path = Path(args.hyp), Path(args.ref)
    else:
        raise ValueError("nothing to score: give --model and --manifest, or --hyp and --ref")
    result = evaluate_files(
        hyp_path,
        ref_path,
        output_dir=args.output_dir,
        compare_path=args.compare,
        normalizer=normalizer,
        num_resamples=args.resamples,
        worst_n=args.worst,
    )
    print(format_summary(result))
    if args.output_dir:
        print(f"report: {Path(args.output_dir) / 'report.html'}")
    return 0


def transcribe_manifest(args: argparse.Namespace, output_dir: Path) -> Path:
    """Transcribe every utterance of the manifest; write `hypotheses.jsonl` (id, text, words)."""
    from asr.data import read_manifest
    from asr.transcribe import AudioSegment, load_model

    utterances = read_manifest(args.manifest)
    if not utterances:
        raise ValueError(f"no usable utterances in {args.manifest}")
    model = load_model(args.model, device=args.device)
    segments = [AudioSegment(u.audio, u.offset, u.duration) for u in utterances]
    results = model.transcribe(
        segments,
        batch_seconds=args.batch_seconds,
        beam_size=args.beam_size,
        lm=args.lm,
        lexicon=args.lexicon,
        lm_weight=args.lm_weight,
        word_score=args.word_score,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "hypotheses.jsonl"
    failed = []
    with path.open("w", encoding="utf-8") as f:
        for utt, result in zip(utterances, results):
            if result.error:
                failed.append(f"{utt.id}: {result.error}")
            f.write(json.dumps({"id": utt.id, "text": result.text or ""}) + "\n")
    if failed:  # scored as empty hypotheses (all deletions): reported, never silently dropped
        print(
            f"warning: {len(failed)} utterances failed to transcribe, scored as empty: {failed[:3]}"
        )
    return path

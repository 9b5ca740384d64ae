"""A whole evaluation: decode a manifest, score hypotheses against references, write a report.

`evaluate_files` (hypothesis file + reference file -> `ScoreResult`, report folder) is what
`asr evaluate` runs; `decode_and_score` (a model, a corpus, `DecodingOptions`, `ChunkingOptions`)
is the one decode-then-score path shared by `asr evaluate --model`, the demo and the recipes: the
engine and the corpus reader of `asr transcribe --manifest`, and its transcript schema;
`load_result` reads a previous evaluation back for a paired comparison.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from asr.bars import progress
from asr.data.corpus import Corpus, open_corpus
from asr.inference.corpus import TRANSCRIPTS, stream_positions, transcribe_positions
from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.inference.streaming import StreamingOptions
from asr.inference.transcribe import Transcriber
from asr.scoring.metrics import (
    ScoreResult,
    UtteranceScore,
    check_same_ids,
    paired_bootstrap,
    result_from_utterances,
    score,
)
from asr.scoring.report import write_report
from asr.scoring.transcripts import read_transcripts
from asr.text import DEFAULT_NORMALIZER, TextNormalizer

log = logging.getLogger(__name__)


def load_result(path: str | Path, num_resamples: int = 1000, seed: int = 0) -> ScoreResult:
    """A previous evaluation: its output folder, or the utterances.jsonl inside it.

    The normalizer is read from summary.json next to utterances.jsonl when it is there.
    """
    path = Path(path)
    utt_path = path / "utterances.jsonl" if path.is_dir() else path
    if not utt_path.is_file():
        raise FileNotFoundError(f"no utterances.jsonl at {utt_path} (give an evaluation folder)")
    utts = []
    for number, line in enumerate(utt_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            utts.append(UtteranceScore.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{utt_path}:{number}: not an utterances.jsonl line ({err})") from None
    summary_path = utt_path.parent / "summary.json"
    normalizer = DEFAULT_NORMALIZER
    if summary_path.is_file():
        normalizer = TextNormalizer(**json.loads(summary_path.read_text())["normalizer"])
    return result_from_utterances(utts, normalizer, num_resamples, seed)


def evaluate_files(
    hyp_path: str | Path,
    ref_path: str | Path,
    output_dir: str | Path | None = None,
    compare_path: str | Path | None = None,
    normalizer: TextNormalizer = DEFAULT_NORMALIZER,
    num_resamples: int = 1000,
    seed: int = 0,
    worst_n: int = 20,
) -> ScoreResult:
    """`asr evaluate`: score a hypothesis file against a reference file, write the report.

    `compare_path` is a previous evaluation (its output folder or utterances.jsonl) scored on
    the same references with the same normalizer; the result then holds a paired `Comparison`.
    """
    refs, hyps = read_transcripts(ref_path), read_transcripts(hyp_path)
    try:
        check_same_ids(refs, hyps)
    except ValueError as err:
        raise ValueError(f"{err} (references: {ref_path}, hypotheses: {hyp_path})") from None
    result = score(refs, hyps, normalizer, num_resamples, seed)
    if compare_path is not None:
        baseline = load_result(compare_path, num_resamples, seed)
        if baseline.normalizer != normalizer:
            raise ValueError(
                f"{compare_path} was scored with {baseline.normalizer}, this run uses "
                f"{normalizer}: re-score both with the same normalizer"
            )
        comparison = paired_bootstrap(
            baseline, result, num_resamples, seed, baseline=str(compare_path)
        )
        result = dataclasses.replace(result, comparison=comparison)
    if output_dir is not None:
        write_report(result, output_dir, worst_n=worst_n)
    return result


def format_summary(result: ScoreResult) -> str:
    """A few lines for the terminal: WER with its CI, CER, S/D/I, SER, counts, comparison."""
    w, c = result.words, result.chars
    lo, hi = result.wer_ci
    lines = [
        f"WER {100 * result.wer:.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f}%)"
        f"  S={w.substitutions} D={w.deletions} I={w.insertions} / N={w.ref_words} words",
        f"CER {100 * result.cer:.2f}%  {c.errors} errors / {c.ref_words} characters",
        f"SER {100 * result.sentence_error_rate:.2f}% of {result.num_utterances} utterances",
    ]
    cmp = result.comparison
    if cmp is not None:
        dlo, dhi = cmp.diff_ci
        lines.append(
            f"vs {cmp.baseline}: WER {100 * cmp.wer_a:.2f}% -> {100 * cmp.wer_b:.2f}%, "
            f"diff {100 * cmp.mean_diff:+.2f} (95% CI {100 * dlo:+.2f} to {100 * dhi:+.2f}), "
            f"P(better) = {cmp.prob_b_better:.3f}"
        )
    return "\n".join(lines)


# Utterances per engine run: one tick of the progress bar. The batches inside a run (up to
# `batch_seconds` of padded audio) are formed from these utterances only.
SLICE = 25


def decode_and_score(
    model: Transcriber,
    manifest: str | Path,
    output_dir: str | Path,
    options: DecodingOptions | None = None,
    *,
    chunking: ChunkingOptions | None = None,
    streaming: StreamingOptions | None = None,
    split: str | None = None,
    label: str | None = None,
    report: bool = True,
    **scoring: Any,
) -> ScoreResult:
    """Transcribe every utterance of the corpus `manifest` (`asr.data.corpus.open_corpus`: a
    manifest, a packed folder, a dataset) into `transcripts.jsonl` (the schema of `asr
    transcribe --manifest`), score it, and (`report`) write the report beside it.

    `label` shows a progress bar with that name. `scoring` goes to `evaluate_files`
    (normalizer, num_resamples, worst_n, compare_path). An utterance that fails to transcribe
    is scored as an empty hypothesis (all deletions) and reported, never dropped.

    `streaming` scores the model live instead (`asr.inference.corpus.stream_positions`: each
    utterance fed to a `Stream` in pieces, decoded with `options` at its end); `chunking` is then
    unused. A model that cannot stream is refused (ValueError, one line) before anything is
    written.
    """
    corpus = open_corpus(manifest, split)
    if not len(corpus):
        raise ValueError(f"no usable utterances in {manifest}")
    if any(text is None for text in corpus.texts):
        raise ValueError(f"{manifest} has no reference texts to score against")
    options, chunking = options or DecodingOptions(), chunking or ChunkingOptions()
    if streaming is not None:  # the model's and the settings' refusals, before any output
        model.stream(streaming.chunk_ms, streaming.left_seconds, options=options,
                     lookahead_ms=streaming.lookahead_ms)  # fmt: skip
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    hyp_path = output_dir / TRANSCRIPTS
    failed = []
    with (
        progress(len(corpus), label or "", "utterances", show=label is not None) as advance,
        hyp_path.open("w", encoding="utf-8") as f,
    ):
        for start in range(0, len(corpus), SLICE):
            positions = range(start, min(start + SLICE, len(corpus)))
            if streaming is None:
                records = transcribe_positions(model, corpus, positions, chunking, options)
            else:
                records = stream_positions(model, corpus, positions, streaming, options)
            for i in positions:
                if records[i]["error"]:
                    failed.append(f"{corpus.ids[i]}: {records[i]['error']}")
                f.write(json.dumps(records[i], ensure_ascii=False) + "\n")
            advance(len(positions))
    if failed:
        log.warning("%d utterances failed to transcribe, scored as empty: %s", len(failed),
                    failed[:3])  # fmt: skip
    references = corpus_references(corpus, output_dir) if not Path(manifest).is_file() else manifest
    return evaluate_files(hyp_path, references, output_dir=output_dir if report else None,
                          **scoring)  # fmt: skip


def corpus_references(corpus: Corpus, output_dir: Path) -> Path:
    """The reference texts of a corpus that is not a manifest file, as `id text` JSONL."""
    path = output_dir / "references.jsonl"
    lines = [json.dumps({"id": i, "text": t}, ensure_ascii=False) for i, t in
             zip(corpus.ids, corpus.texts)]  # fmt: skip
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path

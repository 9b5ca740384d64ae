"""Word and character error rates with jiwer, bootstrap confidence intervals, paired comparison.

Everything that turns references + hypotheses into numbers lives here; `asr.scoring.report`
turns those numbers into files (summary.json, utterances.jsonl, worst.txt, report.html),
`asr.scoring.transcripts` reads hypothesis and reference files, `asr.scoring.evaluate` runs a
whole evaluation.

Conventions, chosen once and used everywhere (training-time validation included):
- Every text passes through `asr.text.normalize_text` (a `TextNormalizer`) before scoring.
- Error rates come from counts SUMMED over the whole set, never averaged per utterance or
  batch: WER = (S + D + I) / N, with N the number of reference words.
- N = 0 (empty reference, or a set of empty references): rate = (S + D + I) / max(N, 1), so
  both empty is 0 and every inserted word against silence counts as 100% (jiwer >= 4 does the
  same). It keeps every number finite and JSON-safe.
- Characters (CER) are those of the normalized text, the single spaces between words included,
  as `jiwer.cer` does on normalized text.
- Confidence intervals: percentile bootstrap over utterances (Bisani & Ney, 2004, "Bootstrap
  estimates for confidence intervals in ASR performance evaluation"), recomputing the rate from
  summed counts in every resample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import jiwer
import numpy as np
import torch

from asr.text import DEFAULT_NORMALIZER, TextNormalizer, normalize_text

# One aligned position: ("equal" | "sub" | "del" | "ins", reference token, hypothesis token).
AlignOp = tuple[str, str | None, str | None]
_JIWER_OPS = {"equal": "equal", "substitute": "sub", "delete": "del", "insert": "ins"}
_FIELDS = ("hits", "substitutions", "deletions", "insertions", "ref_words", "hyp_words")


@dataclass(frozen=True)
class ErrorCounts:
    """Edit counts of one or many utterances; `+` sums them (across batches and ranks).

    For character counts, `ref_words`/`hyp_words` hold the numbers of characters.
    """

    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_words: int = 0
    hyp_words: int = 0

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(*(getattr(self, f) + getattr(other, f) for f in _FIELDS))

    def __radd__(self, other: object) -> ErrorCounts:
        if other == 0:  # lets the builtin sum() start from 0
            return self
        return NotImplemented

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def error_rate(self) -> float:
        """(S + D + I) / max(N, 1): WER for word counts, CER for character counts."""
        return self.errors / max(self.ref_words, 1)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def to_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The six counts as an int64 tensor of shape (6,), ready for `all_reduce(SUM)`."""
        return torch.tensor([getattr(self, f) for f in _FIELDS], dtype=torch.int64, device=device)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> ErrorCounts:
        if tensor.shape != (len(_FIELDS),):
            raise ValueError(
                f"expected a tensor of shape ({len(_FIELDS)},), got {tuple(tensor.shape)}"
            )
        return cls(*(int(v) for v in tensor.tolist()))


def _align(ref: list[str], hyp: list[str], chars: bool) -> tuple[ErrorCounts, list[AlignOp]]:
    """Levenshtein alignment of two token lists (jiwer); empty sides are handled here because
    some jiwer versions refuse an empty reference."""
    if not ref or not hyp:
        ops = [("del", r, None) for r in ref] + [("ins", None, h) for h in hyp]
        return ErrorCounts(0, 0, len(ref), len(hyp), len(ref), len(hyp)), ops
    if chars:
        out = jiwer.process_characters("".join(ref), "".join(hyp))
    else:
        out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    ops: list[AlignOp] = []
    for chunk in out.alignments[0]:
        kind = _JIWER_OPS[chunk.type]
        refs = ref[chunk.ref_start_idx : chunk.ref_end_idx]
        hyps = hyp[chunk.hyp_start_idx : chunk.hyp_end_idx]
        if kind == "del":
            ops += [("del", r, None) for r in refs]
        elif kind == "ins":
            ops += [("ins", None, h) for h in hyps]
        else:
            ops += [(kind, r, h) for r, h in zip(refs, hyps, strict=True)]
    counts = ErrorCounts(
        out.hits, out.substitutions, out.deletions, out.insertions, len(ref), len(hyp)
    )
    return counts, ops


def _prepare(text: str, normalizer: TextNormalizer | None) -> str:
    text = normalize_text(text, normalizer) if normalizer is not None else text
    return " ".join(text.split())


def count_word_errors(
    ref: str, hyp: str, normalizer: TextNormalizer | None = DEFAULT_NORMALIZER
) -> ErrorCounts:
    """Word edit counts of one utterance after normalization (`normalizer=None`: none)."""
    return _align(_prepare(ref, normalizer).split(), _prepare(hyp, normalizer).split(), False)[0]


def count_char_errors(
    ref: str, hyp: str, normalizer: TextNormalizer | None = DEFAULT_NORMALIZER
) -> ErrorCounts:
    """Character edit counts of one utterance; spaces between words count as characters."""
    return _align(list(_prepare(ref, normalizer)), list(_prepare(hyp, normalizer)), True)[0]


@dataclass(frozen=True)
class UtteranceScore:
    """One utterance: normalized texts, word and character counts, word alignment."""

    id: str
    reference: str
    hypothesis: str
    words: ErrorCounts
    chars: ErrorCounts
    alignment: list[AlignOp]

    @property
    def wer(self) -> float:
        return self.words.error_rate

    def to_dict(self) -> dict:
        """One line of utterances.jsonl."""
        return {
            "id": self.id,
            "reference": self.reference,
            "hypothesis": self.hypothesis,
            "wer": self.wer,
            "cer": self.chars.error_rate,
            "words": self.words.to_dict(),
            "chars": self.chars.to_dict(),
            "alignment": [list(op) for op in self.alignment],
        }

    @classmethod
    def from_dict(cls, d: dict) -> UtteranceScore:
        words, chars = ErrorCounts(**d["words"]), ErrorCounts(**d["chars"])
        alignment = [tuple(op) for op in d["alignment"]]
        return cls(d["id"], d["reference"], d["hypothesis"], words, chars, alignment)


@dataclass(frozen=True)
class Comparison:
    """Paired bootstrap of system B (this run) against baseline A on the same utterances.

    `prob_b_better` is the fraction of resamples with WER_B < WER_A, ties counted as one half
    (so two identical systems give exactly 0.5). `mean_diff` and `diff_ci` are of WER_B - WER_A.
    """

    baseline: str
    wer_a: float
    wer_b: float
    prob_b_better: float
    mean_diff: float
    diff_ci: tuple[float, float]
    num_resamples: int
    num_utterances: int


@dataclass(frozen=True)
class ScoreResult:
    """A scored set: totals, 95% bootstrap intervals, per-utterance details in id order."""

    utterances: list[UtteranceScore]
    words: ErrorCounts
    chars: ErrorCounts
    wer_ci: tuple[float, float]
    cer_ci: tuple[float, float]
    normalizer: TextNormalizer = DEFAULT_NORMALIZER
    num_resamples: int = 1000
    seed: int = 0
    comparison: Comparison | None = None

    @property
    def wer(self) -> float:
        return self.words.error_rate

    @property
    def cer(self) -> float:
        return self.chars.error_rate

    @property
    def num_utterances(self) -> int:
        return len(self.utterances)

    @property
    def sentence_error_rate(self) -> float:
        """Fraction of utterances with at least one word error (0 for an empty set)."""
        wrong = sum(1 for u in self.utterances if u.words.errors > 0)
        return wrong / max(len(self.utterances), 1)


def check_same_ids(refs: Iterable[str], hyps: Iterable[str], show: int = 5) -> None:
    """Raise a ValueError naming ids present on one side only (never drop them silently)."""
    ref_ids, hyp_ids = set(refs), set(hyps)
    missing, extra = sorted(ref_ids - hyp_ids), sorted(hyp_ids - ref_ids)
    problems = []
    if missing:
        problems.append(f"{len(missing)} reference id(s) have no hypothesis: {missing[:show]}")
    if extra:
        problems.append(f"{len(extra)} hypothesis id(s) have no reference: {extra[:show]}")
    if problems:
        raise ValueError(
            "utterance ids differ between references and hypotheses; " + "; ".join(problems)
        )


def score_utterance(
    utt_id: str, ref: str, hyp: str, normalizer: TextNormalizer = DEFAULT_NORMALIZER
) -> UtteranceScore:
    """Normalize, align and count one utterance (words and characters)."""
    ref_n, hyp_n = _prepare(ref, normalizer), _prepare(hyp, normalizer)
    words, alignment = _align(ref_n.split(), hyp_n.split(), chars=False)
    chars = _align(list(ref_n), list(hyp_n), chars=True)[0]
    return UtteranceScore(utt_id, ref_n, hyp_n, words, chars, alignment)


def score(
    refs: dict[str, str],
    hyps: dict[str, str],
    normalizer: TextNormalizer = DEFAULT_NORMALIZER,
    num_resamples: int = 1000,
    seed: int = 0,
) -> ScoreResult:
    """Score hypotheses against references (same ids on both sides, or a ValueError)."""
    check_same_ids(refs, hyps)
    utts = [score_utterance(i, refs[i], hyps[i], normalizer) for i in sorted(refs)]
    return result_from_utterances(utts, normalizer, num_resamples, seed)


def result_from_utterances(
    utts: list[UtteranceScore],
    normalizer: TextNormalizer = DEFAULT_NORMALIZER,
    num_resamples: int = 1000,
    seed: int = 0,
) -> ScoreResult:
    """Totals and bootstrap intervals of already scored utterances."""
    words = sum((u.words for u in utts), ErrorCounts())
    chars = sum((u.chars for u in utts), ErrorCounts())
    wer_ci = bootstrap_ci([u.words for u in utts], num_resamples, seed)
    cer_ci = bootstrap_ci([u.chars for u in utts], num_resamples, seed)
    return ScoreResult(utts, words, chars, wer_ci, cer_ci, normalizer, num_resamples, seed)


def _errors_and_lengths(counts: list[ErrorCounts]) -> tuple[np.ndarray, np.ndarray]:
    errors = np.array([c.errors for c in counts], dtype=np.float64)  # (U,)
    lengths = np.array([c.ref_words for c in counts], dtype=np.float64)  # (U,)
    return errors, lengths


def _resampled_rates(
    per_system: list[tuple[np.ndarray, np.ndarray]], num_resamples: int, seed: int
) -> list[np.ndarray]:
    """Rates of each system over the same `num_resamples` resamples of utterances -> (R,) each.

    A resample is a vector of counts (how often each utterance was drawn); rows are drawn in
    blocks so memory stays at about 4M numbers whatever the number of utterances U.
    """
    num_utts = len(per_system[0][0])
    rng = np.random.default_rng(seed)
    block = max(1, 4_000_000 // max(num_utts, 1))
    rates: list[list[np.ndarray]] = [[] for _ in per_system]
    for start in range(0, num_resamples, block):
        rows = min(block, num_resamples - start)
        draws = rng.multinomial(num_utts, np.full(num_utts, 1.0 / num_utts), size=rows)  # (R, U)
        for k, (errors, lengths) in enumerate(per_system):
            rates[k].append((draws @ errors) / np.maximum(draws @ lengths, 1.0))
    return [np.concatenate(r) for r in rates]


def bootstrap_ci(
    counts: list[ErrorCounts], num_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the summed error rate over utterances.

    `num_resamples=0` skips the bootstrap: the interval collapses to the point estimate.
    """
    if not counts or num_resamples <= 0:
        rate = sum(counts, ErrorCounts()).error_rate
        return (rate, rate)
    (rates,) = _resampled_rates([_errors_and_lengths(counts)], num_resamples, seed)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(rates, [tail, 100 - tail])
    return (float(low), float(high))


def paired_bootstrap(
    result_a: ScoreResult,
    result_b: ScoreResult,
    num_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    baseline: str = "A",
) -> Comparison:
    """Is B better than A? Both are resampled with the same utterance draws (Bisani & Ney)."""
    a = {u.id: u for u in result_a.utterances}
    b = {u.id: u for u in result_b.utterances}
    check_same_ids(a, b)
    differing = [i for i in sorted(a) if a[i].reference != b[i].reference]
    if differing:
        raise ValueError(
            f"{len(differing)} utterance(s) have different normalized references in the two "
            f"runs, e.g. {differing[:5]}: compare runs scored on the same references"
        )
    ids = sorted(a)
    if not ids or num_resamples < 1:
        raise ValueError(f"need utterances and num_resamples >= 1, got {len(ids)}, {num_resamples}")
    systems = [_errors_and_lengths([r[i].words for i in ids]) for r in (a, b)]
    rates_a, rates_b = _resampled_rates(systems, num_resamples, seed)
    diff = rates_b - rates_a
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diff, [tail, 100 - tail])
    prob = float(np.mean(diff < 0) + 0.5 * np.mean(diff == 0))
    return Comparison(
        baseline, result_a.wer, result_b.wer, prob, float(diff.mean()),
        (float(low), float(high)), num_resamples, len(ids),
    )  # fmt: skip

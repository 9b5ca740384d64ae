"""Choosing an n-gram LM's weight and word score on a validation set: `tune_lm`.

Beam search with an LM (`asr.inference.decoding`) scores a hypothesis as
    log P_ctc + lm_weight * log P_lm + word_score * (number of words)
and the best `lm_weight` and `word_score` depend on the model, the LM and the data, so they are
chosen on held-out data, never on the test set. `tune_lm` decodes a validation corpus greedily
and at every point of an `LmGrid` (LM weight x word score x beam threshold), scores each the way
`asr evaluate` does (word errors summed over the set, `asr.scoring.metrics`), and picks the point
of lowest WER; ties go to the smaller LM weight, then the word score nearer 0, then the smaller
beam threshold (cheaper). Where that point lies on an outer edge of the grid (the largest LM
weight, the smallest or largest word score, the smallest LM weight above 0), the optimum may lie
beyond it: the search then steps past that edge by the grid's own last step, adding the new row
or column, up to `LmGrid.extend` times (two by default; 0 searches the grid as given). The LM is
used only if the chosen point beats greedy decoding; otherwise `TuneResult.chosen` is greedy
decoding and the result says so.

Cost: the front end and the acoustic model run once over the validation set
(`Transcriber.transcribe_many`: each batch's log-probs go to every decoder) and the decoders of
the grid share one loaded LM (`make_decoders`), so a search costs one acoustic pass plus one
beam search per utterance and grid point, and each step beyond an edge one more acoustic pass
and one beam search per utterance and new point (a 6 x 4 grid grows by at most 11 points a
step). `TuneResult.write` saves the choice, the grid's WERs, the validation set's sha256 and the
seconds taken next to the LM, as `<lm>.tuned.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.bars import progress
from asr.data.corpus import Corpus, open_corpus
from asr.inference.corpus import transcribe_positions_many
from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.inference.transcribe import Transcriber
from asr.scoring.evaluate import SLICE
from asr.scoring.metrics import ErrorCounts, count_word_errors
from asr.text import DEFAULT_NORMALIZER, TextNormalizer

TUNED_SUFFIX = ".tuned.json"


@dataclass(frozen=True)
class LmGrid:
    """The points searched: every LM weight x word score x beam threshold. No beam thresholds:
    the one of the `DecodingOptions` tuned (it matters only where it prunes the best path).
    `extend`: how many times the search may step past an edge where the best point lies."""

    lm_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
    word_scores: tuple[float, ...] = (-1.0, 0.0, 1.0, 2.0)
    beam_thresholds: tuple[float, ...] | None = None
    extend: int = 2

    def __post_init__(self) -> None:
        for name in ("lm_weights", "word_scores", "beam_thresholds"):
            values = getattr(self, name)
            if values is not None and not values:
                raise ValueError(f"the LM grid's {name} is empty")
        if any(w < 0 for w in self.lm_weights):
            raise ValueError(f"the LM grid's lm_weights must be >= 0, got {list(self.lm_weights)}")
        if self.extend < 0:
            raise ValueError(f"the LM grid's extend must be >= 0, got {self.extend}")

    def points(self, options: DecodingOptions) -> list[DecodingOptions]:
        """`options` at each point of the grid, beam thresholds outermost."""
        thresholds = self.beam_thresholds or (options.beam_threshold,)
        return [
            dataclasses.replace(options, lm_weight=w, word_score=s, beam_threshold=t)
            for t in thresholds
            for w in self.lm_weights
            for s in self.word_scores
        ]


@dataclass(frozen=True)
class GridPoint:
    """One decoding of the validation set and its word errors."""

    lm_weight: float
    word_score: float
    beam_threshold: float
    errors: ErrorCounts

    @property
    def wer(self) -> float:
        return self.errors.error_rate

    def to_dict(self) -> dict[str, Any]:
        return {"lm_weight": self.lm_weight, "word_score": self.word_score,
                "beam_threshold": self.beam_threshold, "wer": self.wer,
                "errors": self.errors.errors, "ref_words": self.errors.ref_words}  # fmt: skip


def beyond(values: tuple[float, ...] | list[float], best: float, floor: float | None = None
           ) -> float | None:  # fmt: skip
    """The value one step past the edge of `values` where `best` lies (the step: the distance
    between that edge and its neighbour), or None: `best` inside, fewer than two values, or the
    step would cross `floor`."""
    ordered = sorted(set(values))
    if len(ordered) < 2:
        return None
    if best == ordered[-1]:
        return ordered[-1] + (ordered[-1] - ordered[-2])
    if best == ordered[0]:
        value = ordered[0] - (ordered[1] - ordered[0])
        return value if floor is None or value >= floor else None
    return None


def extension(points: list[GridPoint]) -> list[tuple[float, float, float]]:
    """The (lm_weight, word_score, beam_threshold) points that step past the searched grid's
    edges where its best point lies (an LM weight stays >= 0); empty when it lies inside."""
    best = best_point(points)
    weights = sorted({p.lm_weight for p in points})
    scores = sorted({p.word_score for p in points})
    weight, score = beyond(weights, best.lm_weight, floor=0.0), beyond(scores, best.word_score)
    if weight is None and score is None:
        return []
    weights += [weight] if weight is not None else []
    scores += [score] if score is not None else []
    searched = {(p.lm_weight, p.word_score, p.beam_threshold) for p in points}
    thresholds = dict.fromkeys(p.beam_threshold for p in points)
    return [(w, s, t) for t in thresholds for w in sorted(weights) for s in sorted(scores)
            if (w, s, t) not in searched]  # fmt: skip


def best_point(points: list[GridPoint]) -> GridPoint:
    """The point of fewest errors; ties: smaller LM weight, word score nearer 0 (then the
    negative one), smaller beam threshold."""
    if not points:
        raise ValueError("no grid point to choose from")
    return min(points, key=lambda p: (p.errors.errors, p.lm_weight, abs(p.word_score),
                                      p.word_score, p.beam_threshold))  # fmt: skip


@dataclass(frozen=True)
class TuneResult:
    """What `tune_lm` found: the grid's errors, greedy's, and where it ran (see the module)."""

    options: DecodingOptions  # the options tuned: lm, lexicon, beam_size, log_add
    points: tuple[GridPoint, ...]
    greedy: ErrorCounts
    validation: str
    validation_sha256: str
    utterances: int
    audio_seconds: float
    seconds: float
    normalizer: TextNormalizer = DEFAULT_NORMALIZER

    @property
    def best(self) -> GridPoint:
        return best_point(list(self.points))

    @property
    def lm_beats_greedy(self) -> bool:
        return self.best.errors.errors < self.greedy.errors

    @property
    def chosen(self) -> DecodingOptions:
        """The decoding to use: the best point's, or greedy when the LM does not beat it."""
        if not self.lm_beats_greedy:
            return DecodingOptions()
        best = self.best
        return dataclasses.replace(self.options, lm_weight=best.lm_weight,
                                   word_score=best.word_score,
                                   beam_threshold=best.beam_threshold)  # fmt: skip

    def to_dict(self, model: str | None = None) -> dict[str, Any]:
        best = self.best
        return {
            "lm": self.options.lm, "lexicon": self.options.lexicon, "model": model,
            "decoding": "lm" if self.lm_beats_greedy else "greedy",
            "lm_beats_greedy": self.lm_beats_greedy,
            "lm_weight": best.lm_weight, "word_score": best.word_score,
            "beam_size": self.options.beam_size, "beam_size_token": self.options.beam_size_token,
            "beam_threshold": best.beam_threshold,
            "log_add": self.options.log_add,
            "val_wer": best.wer, "greedy_val_wer": self.greedy.error_rate,
            "grid": [p.to_dict() for p in self.points],
            "validation": {"path": self.validation, "sha256": self.validation_sha256,
                           "utterances": self.utterances, "audio_seconds": self.audio_seconds,
                           "ref_words": self.greedy.ref_words},
            "normalizer": dataclasses.asdict(self.normalizer),
            "seconds": self.seconds,
        }  # fmt: skip

    def write(self, path: str | Path | None = None, model: str | None = None) -> Path:
        """The JSON of `to_dict` at `path` (default: next to the LM, `<lm>.tuned.json`)."""
        path = Path(path) if path is not None else tuned_path(self.options.lm)
        path.write_text(json.dumps(self.to_dict(model), indent=2) + "\n", encoding="utf-8")
        return path


def tuned_path(lm: str | Path) -> Path:
    """Where the tuned values of the LM at `lm` are written: `<lm>.tuned.json`."""
    return Path(str(lm) + TUNED_SUFFIX)


def load_tuned(path: str | Path) -> DecodingOptions:
    """The decoding a `<lm>.tuned.json` chose: beam search with its values, or greedy when its
    LM did not beat greedy decoding on the validation set."""
    found = json.loads(Path(path).read_text(encoding="utf-8"))
    if found.get("decoding") not in ("lm", "greedy"):
        raise ValueError(f"{path} is not a tuned LM file (no 'decoding': 'lm' or 'greedy')")
    return best_options(found) if found["decoding"] == "lm" else DecodingOptions()


SUMMARY_FIELDS = ("decoding", "lm_weight", "word_score", "beam_threshold", "val_wer",
                  "greedy_val_wer")  # fmt: skip


def tuned_summary(found: dict[str, Any]) -> dict[str, Any]:
    """What a recipe reports of a `<lm>.tuned.json`'s dict: the choice and the validation WERs."""
    return {name: found[name] for name in SUMMARY_FIELDS}


def best_options(found: dict[str, Any]) -> DecodingOptions:
    """The beam search at the best grid point of a `<lm>.tuned.json`'s dict, whether or not it
    beat greedy decoding (to show what the LM does at its best on another set)."""
    names = ("lm", "lexicon", "lm_weight", "word_score", "beam_size", "beam_threshold", "log_add")
    # beam_size_token: absent from files written before it existed (all tokens, as then)
    return DecodingOptions(**{name: found[name] for name in names},
                           beam_size_token=found.get("beam_size_token"))  # fmt: skip


def tune_lm(
    transcriber: Transcriber,
    validation: str | Path,
    options: DecodingOptions,
    grid: LmGrid | None = None,
    *,
    chunking: ChunkingOptions | None = None,
    normalizer: TextNormalizer = DEFAULT_NORMALIZER,
    split: str | None = None,
    label: str | None = None,
) -> TuneResult:
    """Decode the corpus `validation` greedily and with `options` (its `lm`, `lexicon`,
    `beam_size`, `log_add`) at every point of `grid`, in one acoustic pass; score each (see the
    module docstring). `label` shows a progress bar with that name.

    ValueError: no LM in `options`, an empty validation set, or one without reference texts.
    """
    if options.lm is None:
        raise ValueError("tuning the LM weight needs an LM (--lm)")
    began = time.perf_counter()
    corpus = _validation_corpus(validation, split)
    grid, chunking = grid or LmGrid(), chunking or ChunkingOptions()
    candidates = [DecodingOptions(), *grid.points(options)]  # greedy first
    greedy, *errors = _errors(transcriber, corpus, chunking, candidates, normalizer, label)
    points = [GridPoint(o.lm_weight, o.word_score, o.beam_threshold, e)
              for o, e in zip(candidates[1:], errors, strict=True)]  # fmt: skip
    for step in range(grid.extend):
        new = extension(points)
        if not new:
            break
        candidates = [dataclasses.replace(options, lm_weight=w, word_score=s, beam_threshold=t)
                      for w, s, t in new]  # fmt: skip
        more = _errors(transcriber, corpus, chunking, candidates, normalizer,
                       label and f"{label}, past the grid's edge ({step + 1})")  # fmt: skip
        points += [GridPoint(w, s, t, e) for (w, s, t), e in zip(new, more, strict=True)]
    return TuneResult(options, tuple(points), greedy, str(validation),
                      _fingerprint(validation, corpus), len(corpus), sum(corpus.durations),
                      round(time.perf_counter() - began, 3), normalizer)  # fmt: skip


def format_grid(result: TuneResult) -> str:
    """The grid's validation WERs as a table (LM weight down, word score across), one per beam
    threshold, then greedy's and the choice."""
    scores = sorted({p.word_score for p in result.points})
    lines = [f"LM weight search on {result.validation}: {result.utterances} utterances, "
             f"{len(result.points)} points + greedy, {result.seconds:.1f} s"]  # fmt: skip
    for threshold in dict.fromkeys(p.beam_threshold for p in result.points):
        table = {(p.lm_weight, p.word_score): p.wer for p in result.points
                 if p.beam_threshold == threshold}  # fmt: skip
        lines.append(f"validation WER (%), beam threshold {threshold:g}:")
        lines.append("lm_weight \\ word_score" + "".join(f"{s:>8g}" for s in scores))
        for weight in sorted({w for w, _ in table}):
            cells = [table.get((weight, s)) for s in scores]
            lines.append(f"{weight:>22g}" + "".join(
                f"{100 * c:>8.2f}" if c is not None else f"{'-':>8}" for c in cells))  # fmt: skip
    best = result.best
    lines.append(f"greedy: {100 * result.greedy.error_rate:.2f}%; best: lm_weight "
                 f"{best.lm_weight:g}, word_score {best.word_score:g}, beam_threshold "
                 f"{best.beam_threshold:g}: {100 * best.wer:.2f}%")  # fmt: skip
    if result.lm_beats_greedy:
        lines.append("chosen: the LM with the best point's values")
    else:
        lines.append("chosen: greedy decoding (the LM does not beat greedy on the validation set)")
    return "\n".join(lines)


def _errors(
    transcriber: Transcriber,
    corpus: Corpus,
    chunking: ChunkingOptions,
    candidates: list[DecodingOptions],
    normalizer: TextNormalizer,
    label: str | None,
) -> list[ErrorCounts]:
    """The word errors of each candidate decoding over the corpus, in one acoustic pass."""
    errors = [ErrorCounts()] * len(candidates)
    with progress(len(corpus), label or "", "utterances", show=label is not None) as advance:
        for start in range(0, len(corpus), SLICE):
            positions = range(start, min(start + SLICE, len(corpus)))
            texts = _transcribe(transcriber, corpus, positions, chunking, candidates)
            for j, hyps in enumerate(texts):
                errors[j] += sum(
                    (count_word_errors(corpus.texts[i], hyp, normalizer)
                     for i, hyp in zip(positions, hyps, strict=True)),
                    ErrorCounts(),
                )  # fmt: skip
            advance(len(positions))
    return errors


def _validation_corpus(validation: str | Path, split: str | None) -> Corpus:
    corpus = open_corpus(validation, split)
    if not len(corpus):
        raise ValueError(f"validation set {validation} has no utterances: nothing to tune on")
    if any(text is None for text in corpus.texts):
        raise ValueError(f"validation set {validation} has no reference texts to tune against")
    return corpus


def _transcribe(
    transcriber: Transcriber,
    corpus: Corpus,
    positions: range,
    chunking: ChunkingOptions,
    candidates: list[DecodingOptions],
) -> list[list[str]]:
    """Per candidate, the hypothesis of each position ("" where the audio failed, scored as
    all deletions, as `decode_and_score` does)."""
    per_candidate = transcribe_positions_many(transcriber, corpus, positions, chunking, candidates)
    return [[records[i]["text"] for i in positions] for records in per_candidate]


def _fingerprint(validation: str | Path, corpus: Corpus) -> str:
    """sha256 of the manifest file; of the ids, texts and durations of any other corpus."""
    path = Path(validation)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    rows = json.dumps([corpus.ids, corpus.texts, corpus.durations], ensure_ascii=False)
    return hashlib.sha256(rows.encode("utf-8")).hexdigest()

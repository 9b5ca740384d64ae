"""Word timings from the CTC alignment: `Word`, `align_words`, `split_words`.

The decoded tokens of one utterance are force-aligned to its log-probs (torchaudio's
`forced_align`, the Viterbi path of CTC, Graves et al. 2006); a word spans the frames of its
tokens, and its confidence is the geometric mean of their posteriors.

How words are found: with a tokenizer that has a separator token (`space_id`: characters, "|")
it separates words; otherwise (SentencePiece) a piece that `begins_word` ("▁...") starts one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio
from torch import Tensor

from asr.data.manifest import ctc_min_frames
from asr.tokenizer import BLANK_ID, Tokenizer


@dataclass(frozen=True)
class Word:
    """One recognized word: times in seconds from the start of the input, confidence in [0, 1]."""

    word: str
    start: float
    end: float
    confidence: float


def align_words(
    log_probs: Tensor,
    token_ids: list[int],
    tokenizer: Tokenizer,
    frame_seconds: float,
    offset: float = 0.0,
) -> list[Word]:
    """Words of `token_ids` with times from the CTC forced alignment over log_probs (T', V).

    `log_probs` holds one utterance's valid frames only. A word starts at the first frame of its
    first token and ends after the last frame of its last token; times are
    `offset + frame * frame_seconds`. Confidence is the geometric mean, over the frames aligned
    to the word's tokens (blank frames excluded), of the posterior of the aligned token.

    Tokenizers with a word separator (characters): the "|" between words is aligned too when the frames allow it (a beam search
    may put a separator where the model emitted none; then the words alone are aligned).
    """
    words = split_words(token_ids, tokenizer)
    if not words:
        return []
    T = log_probs.shape[0]
    targets = [i for word in words for i in word]
    space = tokenizer.space_id
    if space is not None:
        with_spaces = [i for word in words for i in (*word, space)][:-1]
        if ctc_min_frames(with_spaces) <= T:
            targets = with_spaces
    assert ctc_min_frames(targets) <= T, (len(targets), T)
    path, scores = torchaudio.functional.forced_align(
        log_probs.detach().float().cpu()[None],  # (1, T', V)
        torch.tensor([targets], dtype=torch.int32),  # (1, L)
        torch.tensor([T]),
        torch.tensor([len(targets)]),
        blank=BLANK_ID,
    )  # path (1, T'), scores (1, T'): the aligned label and its log-probability per frame
    runs = _token_runs(path[0].tolist())
    assert [label for label, _, _ in runs] == targets, (runs, targets)
    if space is not None:
        runs = [run for run in runs if run[0] != space]
    frame_scores, result, first = scores[0].tolist(), [], 0
    for word in words:
        group, first = runs[first : first + len(word)], first + len(word)
        logp = [frame_scores[t] for _, s, e in group for t in range(s, e + 1)]
        start, end = group[0][1], group[-1][2] + 1
        result.append(
            Word(
                tokenizer.decode(word).strip(),
                offset + start * frame_seconds,
                offset + end * frame_seconds,
                math.exp(sum(logp) / len(logp)),
            )
        )
    return result


def split_words(token_ids: list[int], tokenizer: Tokenizer) -> list[list[int]]:
    """Token ids -> the ids of each word (blanks and "|" separators dropped, empty words too)."""
    words: list[list[int]] = [[]]
    for i in token_ids:
        if i == BLANK_ID:
            continue
        if i == tokenizer.space_id:
            words.append([])
            continue
        if tokenizer.begins_word(i):
            words.append([])
        words[-1].append(i)
    return [w for w in words if w and tokenizer.decode(w).strip()]


def _token_runs(path: list[int]) -> list[tuple[int, int, int]]:
    """(label, first frame, last frame) of each token of a CTC path (a run of one non-blank)."""
    runs: list[tuple[int, int, int]] = []
    for t, label in enumerate(path):
        if label == BLANK_ID:
            continue
        if t > 0 and path[t - 1] == label:
            runs[-1] = (label, runs[-1][1], t)
        else:
            runs.append((label, t, t))
    return runs

"""The transcription engine: every way of transcribing files runs here, a step at a time.

`Engine.run` takes inputs (file paths, `AudioSegment`s, `(samples, rate)` pairs) and
`ChunkingOptions`, and:

1. plans: an input longer than `chunk_seconds` becomes windows of that length overlapping by
   `chunk_overlap` (`plan_chunks`); a file is read one window at a time, never whole, so memory
   stays flat however long it is;
2. batches: the windows of all inputs, longest first, up to `batch_seconds` of padded audio per
   forward pass (`batch_pieces`); padding never changes a result;
3. decodes each batch (a step): front end, acoustic model, the decoder of the
   `DecodingOptions`, word timings by forced alignment;
4. stitches the windows of an input: each word is kept from the one window that owns its centre
   (`stitch_chunks`).

Between steps it asks `should_stop()` (True raises `Stopped`: a server's time limit, a client
gone) and hands each input's words to `on_words(index, words)` as soon as no later window can
change them: once window k+1 of an input is decoded, the cut between k and k+1 is known. A
failing input (missing, empty, corrupt, not audio) gets a `Result` whose `error` is a one-line
message naming it; the other inputs are transcribed all the same.

`Engine.run_many` decodes each batch with several decoders from one pass of the acoustic model
(a search over LM weights, `asr.scoring.tune`): one list of results per decoder, each what `run`
with that decoder alone gives.

`Transcriber.transcribe`, the server, `asr evaluate --model`, `asr transcribe --manifest` (one
process or many) and the demo all run this loop; none plans, batches or stitches on its own.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.audio import AudioError, AudioSegment, audio_duration, load_audio, load_audio_array
from asr.checkpoint import ModelBundle
from asr.inference.alignment import Word, align_words
from asr.inference.decoding import Decoder
from asr.inference.options import ChunkingOptions
from asr.inference.result import Result

Chunk = tuple[float, float, list[Word]]  # (start, end, words) in seconds from the input's start
OnWords = Callable[[int, list[Word]], None]

__all__ = ["AudioSegment", "Chunk", "Engine", "Stopped", "batch_pieces", "plan_chunks",
           "stitch_chunks"]  # fmt: skip


class Stopped(Exception):
    """`should_stop()` said so before a step: the transcription was abandoned."""


@dataclass
class _Source:
    """One input resolved: where its audio comes from, how long it is, what is decoded so far."""

    result: Result
    path: Path | None = None
    offset: float = 0.0
    samples: Tensor | None = None  # (N,) in-memory inputs only
    chunks: list[list[Chunk]] = field(default_factory=list)  # per decoder, windows decoded so far
    settled: int = 0  # words of `chunks` handed to on_words so far, in stitched order
    pending: list[Word] = field(default_factory=list)  # words the last window keeps so far


class Engine:
    """Plans, batches, decodes and stitches for one loaded bundle (see the module docstring)."""

    def __init__(self, bundle: ModelBundle, device: torch.device) -> None:
        self.bundle, self.device = bundle, device
        self.sample_rate = bundle.frontend.config.sample_rate
        self.frame_seconds = bundle.frame_seconds

    def run(
        self,
        inputs: list[Any],
        chunking: ChunkingOptions,
        decoder: Decoder,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_words: OnWords | None = None,
    ) -> list[Result]:
        """Results in input order (see the module docstring)."""
        return self._run(inputs, chunking, [decoder], should_stop, on_words)[0]

    def run_many(
        self,
        inputs: list[Any],
        chunking: ChunkingOptions,
        decoders: Sequence[Decoder],
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Result]]:
        """Per decoder, the results in input order: what `run` gives with that decoder, from one
        pass of the front end and acoustic model (each batch's log-probs go to every decoder)."""
        if not decoders:
            raise ValueError("run_many needs at least one decoder")
        return self._run(inputs, chunking, list(decoders), should_stop, None)

    def _run(
        self,
        inputs: list[Any],
        chunking: ChunkingOptions,
        decoders: list[Decoder],
        should_stop: Callable[[], bool] | None,
        on_words: OnWords | None,
    ) -> list[list[Result]]:
        """Per decoder, results in input order; `on_words` hears the first decoder's words."""
        sources = [self._resolve(i, item) for i, item in enumerate(inputs)]
        for source in sources:
            source.chunks = [[] for _ in decoders]
        pieces = [
            (k, start, length)
            for k, source in enumerate(sources)
            if source.result.error is None
            for start, length in plan_chunks(
                source.result.duration, chunking.chunk_seconds, chunking.chunk_overlap
            )
        ]
        pieces.sort(key=lambda piece: -piece[2])  # longest first, stable: less padding
        with torch.inference_mode():
            for step in batch_pieces(pieces, chunking.batch_seconds, lambda piece: piece[2]):
                if should_stop is not None and should_stop():
                    done = sum(s.settled for s in sources)
                    raise Stopped(f"stopped after {done} words")
                self._decode_step([(sources[k], start, length) for k, start, length in step],
                                  decoders)  # fmt: skip
                if on_words is not None:
                    for k in dict.fromkeys(k for k, _, _ in step):
                        _hand_out(sources[k], k, on_words, final=False)
        results: list[list[Result]] = [[] for _ in decoders]
        for k, source in enumerate(sources):
            if source.result.error is None and on_words is not None:
                _hand_out(source, k, on_words, final=True)
            for d, row in enumerate(results):
                result = source.result if d == 0 else dataclasses.replace(source.result)
                if result.error is None:
                    result.words = stitch_chunks(source.chunks[d])
                    result.text = " ".join(w.word for w in result.words)
                row.append(result)
            source.chunks, source.pending = [], []
        return results

    def _resolve(self, index: int, item: Any) -> _Source:
        """An input -> its `_Source`; a bad input gets its error message instead."""
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], numbers.Real):
            name = f"array{index}"
            source = _Source(Result(id=name, path=None))
            try:
                source.samples = load_audio_array(item[0], int(item[1]), self.sample_rate, name)
                source.result.duration = len(source.samples) / self.sample_rate
            except AudioError as err:
                source.result.error = str(err)
            return source
        segment = item if isinstance(item, AudioSegment) else AudioSegment(item)
        path = Path(segment.path)
        source = _Source(Result(id=segment.id or str(path), path=str(path)), path, segment.offset)
        try:
            total = audio_duration(path)
            if segment.offset >= total:
                raise AudioError(f"offset {segment.offset} s is past the end of '{path}'")
            rest = total - segment.offset
            source.result.duration = (
                rest if segment.duration is None else min(segment.duration, rest)
            )
        except AudioError as err:
            source.result.error = str(err)
        return source

    def _load(self, source: _Source, start: float, length: float) -> Tensor:
        """Samples (N,) of [start, start + length) s of the input: only these are read."""
        if source.samples is not None:
            first = round(start * self.sample_rate)
            return source.samples[first : first + round(length * self.sample_rate)]
        return load_audio(source.path, self.sample_rate, source.offset + start, length)

    def _decode_step(
        self, step: list[tuple[_Source, float, float]], decoders: list[Decoder]
    ) -> None:
        """Load, featurize, encode, then decode and time the windows of one batch with each
        decoder."""
        model, frontend = self.bundle.model, self.bundle.frontend
        waves, kept = [], []
        for source, start, length in step:
            if source.result.error is not None:
                continue  # an earlier window of this input already failed
            try:
                wave = self._load(source, start, length)
            except AudioError as err:
                source.result.error = str(err)
                continue
            end = start + len(wave) / self.sample_rate
            if model.output_lengths(torch.tensor([frontend.num_frames(len(wave))])).item() < 1:
                for chunks in source.chunks:  # too short for one output frame
                    chunks.append((start, end, []))
            else:
                waves.append(wave)
                kept.append((source, start, end))
        if not waves:
            return
        wave_lengths = torch.tensor([len(w) for w in waves])  # (B,)
        padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)  # (B, N)
        feats, feat_lengths = frontend(padded.to(self.device), wave_lengths.to(self.device))
        log_probs, out_lengths = model(feats, feat_lengths)  # (B, T', V), (B,)
        token_ids = [decoder(log_probs, out_lengths) for decoder in decoders]
        log_probs, out_lengths = log_probs.cpu(), out_lengths.cpu()
        for b, (source, start, end) in enumerate(kept):
            frames = log_probs[b, : int(out_lengths[b])]  # (T'_b, V)
            for chunks, ids in zip(source.chunks, token_ids, strict=True):
                words = align_words(
                    frames, ids[b], self.bundle.tokenizer, self.frame_seconds, offset=start
                )
                chunks.append((start, end, words))


def _hand_out(source: _Source, index: int, on_words: OnWords, final: bool) -> None:
    """Give `on_words` the words of `source` that no later window can change (all at the end).

    Windows arrive in plan order. When window k+1 arrives, the cut between k and k+1 is fixed,
    so window k's words on its side of that cut (and of the cut before it, `pending`) are final.
    Words are told apart by identity: two windows can hold equal words.
    """
    if source.result.error is not None:
        return
    chunks = source.chunks[0]
    while source.settled < len(chunks):
        k = source.settled
        if k == 0:
            source.pending = chunks[0][2]
        else:
            kept = stitch_chunks([chunks[k - 1], chunks[k]])
            left = {id(w) for w in source.pending}
            right = {id(w) for w in chunks[k][2]}
            settled = [w for w in kept if id(w) in left]
            source.pending = [w for w in kept if id(w) in right]
            if settled:
                on_words(index, settled)
        source.settled += 1
    if final and source.pending:
        on_words(index, source.pending)
        source.pending = []


def plan_chunks(duration: float, chunk_seconds: float, overlap: float) -> list[tuple[float, float]]:
    """(start, length) of windows covering [0, duration): `chunk_seconds` long, each overlapping
    the next by at least `overlap`; the last one ends at `duration`."""
    if duration <= chunk_seconds:
        return [(0.0, duration)]
    step, chunks = chunk_seconds - overlap, []
    while not chunks or chunks[-1][0] + chunk_seconds < duration:
        start = min(len(chunks) * step, duration - chunk_seconds)
        chunks.append((start, chunk_seconds))
    return chunks


def batch_pieces(pieces: list, batch_seconds: float, length: Callable[[Any], float]) -> list[list]:
    """Consecutive runs of pieces (longest first; `length(piece)` in seconds) whose padded length,
    (first piece's length) x (count), stays <= batch_seconds."""
    batches: list[list] = []
    for piece in pieces:
        if batches and length(batches[-1][0]) * (len(batches[-1]) + 1) <= batch_seconds:
            batches[-1].append(piece)
        else:
            batches.append([piece])
    return batches


def stitch_chunks(chunks: Sequence[Chunk]) -> list[Word]:
    """The words of overlapping chunks `(start, end, words)`, each word kept once.

    Between two chunks the cut is the midpoint of their overlap, moved to the nearest point (in
    the middle half of the overlap) that lies inside no word of either chunk, so a word seen by
    both chunks falls on one side of the cut in both. A chunk keeps the words whose centre lies
    between its two cuts.
    """
    chunks = sorted(chunks, key=lambda c: c[0])
    cuts = [-math.inf]
    for (_, prev_end, prev_words), (start, _, words) in itertools.pairwise(chunks):
        cuts.append(_cut(prev_words + words, start, prev_end))
    cuts.append(math.inf)
    return [
        w
        for k, (_, _, words) in enumerate(chunks)
        for w in words
        if cuts[k] <= (w.start + w.end) / 2 < cuts[k + 1]
    ]


def _cut(words: list[Word], lo: float, hi: float) -> float:
    mid, quarter = (lo + hi) / 2, (hi - lo) / 4
    candidates = [mid] + [t for w in words for t in (w.start, w.end) if abs(t - mid) <= quarter]
    free = [t for t in candidates if not any(w.start < t < w.end for w in words)]
    return min(free, key=lambda t: abs(t - mid)) if free else mid

"""Transcription of any audio of any length: `load_model` and `Transcriber`.

An input is a file path, an `AudioSegment` (a stretch of a file, as in a manifest) or a
`(samples, sample_rate)` pair. Inputs longer than `chunk_seconds` are cut into chunks of that
length overlapping by `chunk_overlap`; a file is read one chunk at a time (never whole), so
memory stays flat however long it is. Chunks of all inputs are sorted by length and batched up to
`batch_seconds` of padded audio; padding never changes a result. Each chunk is decoded
(`asr.inference.decoding`), its words timed by forced alignment, and the chunks of an input are stitched
(`stitch_chunks`): each word is kept from the one chunk that owns its centre.

A failing input (missing, empty, corrupt, not audio) gives a `Result` whose `error` is a one-line
message naming it; the other inputs are transcribed all the same.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.audio import AudioError, audio_duration, load_audio, load_audio_array
from asr.checkpoint import ModelBundle
from asr.inference.alignment import Word, align_words
from asr.inference.decoding import Decoder, DecodingOptions, make_decoder
from asr.inference.onnx import is_onnx_path, load_onnx_bundle
from asr.inference.result import Result
from asr.inference.streaming import DEFAULT_CHUNK_MS, DEFAULT_LEFT_SECONDS, Stream
from asr.interop.sources import model_file, open_bundle

DEFAULT_BATCH_SECONDS = 120.0
# Self-attention is quadratic in length: on 2 busy CPU cores the "s" model ran a 60 s file at
# a real-time factor of 0.09 in 10 s chunks, 0.10 in 20 s, 0.13 in 30 s and 0.28 in one piece;
# 20 s keeps most of the speed while staying close to the length of training utterances.
DEFAULT_CHUNK_SECONDS = 20.0
DEFAULT_CHUNK_OVERLAP = 4.0

__all__ = ["AudioSegment", "Result", "Transcriber", "Word", "load_model", "stitch_chunks"]


@dataclass(frozen=True)
class AudioSegment:
    """[offset, offset + duration) seconds of the file at `path` (duration None: to the end)."""

    path: str | Path
    offset: float = 0.0
    duration: float | None = None
    id: str | None = None


@dataclass
class _Source:
    """One input resolved: where its audio comes from and how long it is."""

    result: Result
    path: Path | None = None
    offset: float = 0.0
    samples: Tensor | None = None  # (N,) in-memory inputs only
    chunks: list[tuple[float, float, list[Word]]] = field(default_factory=list)


def load_model(path: str | Path, device: str = "cpu") -> Transcriber:
    """A `Transcriber` for the model bundle at `path` ("auto" device: CUDA when available).

    `path` is a `model.pt` bundle, the name of a shipped one, an NVIDIA NeMo `.nemo` file, an
    `hf://OWNER/REPO[@REVISION][/FILE]` path on the Hugging Face Hub (`asr.interop.sources`), or
    an exported `.onnx` file (run by ONNX Runtime on the CPU, `asr.inference.onnx`).
    """
    if is_onnx_path(path):
        bundle = load_onnx_bundle(model_file(path))
        return Transcriber(bundle, "cpu" if device == "auto" else device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is available")
    return Transcriber(open_bundle(path, device), device)


class Transcriber:
    """A loaded model bundle, ready to transcribe (see the module docstring)."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "cpu") -> None:
        self.bundle = bundle.to(device)
        self.device = torch.device(device)
        self.sample_rate = bundle.frontend.config.sample_rate
        subsampling = bundle.model.config.subsampling_factor
        self.frame_seconds = bundle.frontend.hop * subsampling / self.sample_rate
        self._decoder: tuple[DecodingOptions, Decoder] | None = None

    def transcribe(
        self,
        inputs: Any,
        batch_seconds: float = DEFAULT_BATCH_SECONDS,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
        chunk_overlap: float = DEFAULT_CHUNK_OVERLAP,
        *,
        options: DecodingOptions | None = None,
        **decoding: Any,
    ) -> list[Result]:
        """Results in input order for paths, `AudioSegment`s or `(samples, rate)` pairs (or one).

        Decoding: `options`, or its fields as keywords (`lm=..., beam_size=...`); neither is
        greedy decoding. Bad options raise ValueError; a bad input gets a `Result` with its
        `error` set.
        """
        if options is not None and decoding:
            raise ValueError("give either options=DecodingOptions(...) or its fields, not both")
        options = options or DecodingOptions(**decoding)
        if not 0 <= chunk_overlap < chunk_seconds:
            raise ValueError(
                f"need 0 <= chunk_overlap < chunk_seconds, got {chunk_overlap} and {chunk_seconds}"
            )
        if batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be > 0, got {batch_seconds}")
        decoder = self._get_decoder(options)
        sources = [self._resolve(i, item) for i, item in enumerate(_as_list(inputs))]
        pieces = [
            (source, start, length)
            for source in sources
            if source.result.error is None
            for start, length in plan_chunks(source.result.duration, chunk_seconds, chunk_overlap)
        ]
        pieces.sort(key=lambda piece: -piece[2])  # longest first, stable: less padding
        with torch.inference_mode():
            for batch in batch_pieces(pieces, batch_seconds, lambda piece: piece[2]):
                self._transcribe_batch(batch, decoder)
        for source in sources:
            if source.result.error is None:
                source.result.words = stitch_chunks(source.chunks)
                source.result.text = " ".join(w.word for w in source.result.words)
            source.chunks = []
        return [source.result for source in sources]

    def stream(
        self,
        chunk_ms: float = DEFAULT_CHUNK_MS,
        left_seconds: float | None = DEFAULT_LEFT_SECONDS,
        *,
        options: DecodingOptions | None = None,
        id: str = "stream",
        **decoding: Any,
    ) -> Stream:
        """A `Stream` for live audio: `accept(samples)` pieces of any size (partial text after
        each chunk of `chunk_ms`), then `finish()` (the final `Result`). Attention sees at most
        `left_seconds` before each chunk (None: everything; memory then grows with the input).
        Needs a model trained with `encoder.causal_conv` (asr.inference.streaming)."""
        if options is not None and decoding:
            raise ValueError("give either options=DecodingOptions(...) or its fields, not both")
        decoder = self._get_decoder(options or DecodingOptions(**decoding))
        return Stream(self.bundle, self.device, decoder, chunk_ms, left_seconds, id)

    def _get_decoder(self, options: DecodingOptions) -> Decoder:
        if self._decoder is None or self._decoder[0] != options:
            self._decoder = (options, make_decoder(self.bundle.tokenizer, options))
        return self._decoder[1]

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

    def _transcribe_batch(
        self, batch: list[tuple[_Source, float, float]], decoder: Decoder
    ) -> None:
        """Load, featurize, encode, decode and time the chunks of one batch."""
        model, frontend = self.bundle.model, self.bundle.frontend
        waves, kept = [], []
        for source, start, length in batch:
            if source.result.error is not None:
                continue  # an earlier chunk of this input already failed
            try:
                wave = self._load(source, start, length)
            except AudioError as err:
                source.result.error = str(err)
                continue
            end = start + len(wave) / self.sample_rate
            if model.output_lengths(torch.tensor([frontend.num_frames(len(wave))])).item() < 1:
                source.chunks.append((start, end, []))  # too short for one output frame
            else:
                waves.append(wave)
                kept.append((source, start, end))
        if not waves:
            return
        wave_lengths = torch.tensor([len(w) for w in waves])  # (B,)
        padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)  # (B, N)
        feats, feat_lengths = frontend(padded.to(self.device), wave_lengths.to(self.device))
        log_probs, out_lengths = model(feats, feat_lengths)  # (B, T', V), (B,)
        token_ids = decoder(log_probs, out_lengths)
        log_probs, out_lengths = log_probs.cpu(), out_lengths.cpu()
        for b, (source, start, end) in enumerate(kept):
            frames = log_probs[b, : int(out_lengths[b])]  # (T'_b, V)
            words = align_words(
                frames, token_ids[b], self.bundle.tokenizer, self.frame_seconds, offset=start
            )
            source.chunks.append((start, end, words))


def _as_list(inputs: Any) -> list[Any]:
    """A single path, segment or (samples, rate) pair -> [it]; a list stays as it is."""
    if isinstance(inputs, str | Path | AudioSegment):
        return [inputs]
    if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[1], numbers.Real):
        return [inputs]
    return list(inputs)


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


def stitch_chunks(chunks: Sequence[tuple[float, float, list[Word]]]) -> list[Word]:
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

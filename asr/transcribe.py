"""Transcription of any audio of any length: `load_model`, `Transcriber`, and `asr transcribe`.

An input is a file path, an `AudioSegment` (a stretch of a file, as in a manifest) or a
`(samples, sample_rate)` pair. Inputs longer than `chunk_seconds` are cut into chunks of that
length overlapping by `chunk_overlap`; a file is read one chunk at a time (never whole), so
memory stays flat however long it is. Chunks of all inputs are sorted by length and batched up to
`batch_seconds` of padded audio; padding never changes a result. Each chunk is decoded
(`asr.decoding`), its words timed by forced alignment, and the chunks of an input are stitched
(`stitch_chunks`): each word is kept from the one chunk that owns its centre.

A failing input (missing, empty, corrupt, not audio) gives a `Result` whose `error` is a one-line
message naming it; the other inputs are transcribed all the same.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import numbers
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.audio import AudioError, audio_duration, find_audio_files, load_audio, load_audio_array
from asr.checkpoint import BundleError, ModelBundle, atomic_write, load_bundle
from asr.decoding import Decoder, DecodingOptions, Word, align_words, make_decoder

DEFAULT_BATCH_SECONDS = 120.0
# Self-attention is quadratic in length: on 2 busy CPU cores the "s" model ran a 60 s file at
# a real-time factor of 0.09 in 10 s chunks, 0.10 in 20 s, 0.13 in 30 s and 0.28 in one piece;
# 20 s keeps most of the speed while staying close to the length of training utterances.
DEFAULT_CHUNK_SECONDS = 20.0
DEFAULT_CHUNK_OVERLAP = 4.0
FORMATS = ("txt", "json", "srt", "vtt")
CUE_MAX_SECONDS, CUE_MAX_CHARS, CUE_MAX_GAP = 7.0, 42, 1.0

__all__ = ["AudioSegment", "Result", "Transcriber", "Word", "load_model", "stitch_chunks"]


@dataclass(frozen=True)
class AudioSegment:
    """[offset, offset + duration) seconds of the file at `path` (duration None: to the end)."""

    path: str | Path
    offset: float = 0.0
    duration: float | None = None
    id: str | None = None


@dataclass
class Result:
    """The transcript of one input; `error` is None, or why this input could not be transcribed.

    Word times are seconds from the start of the input (of the segment, for an `AudioSegment`).
    """

    id: str
    path: str | None
    text: str = ""
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON; times and confidences rounded to 3 decimals."""
        words = [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
             "confidence": round(w.confidence, 3)}
            for w in self.words
        ]  # fmt: skip
        return {"id": self.id, "path": self.path, "text": self.text, "words": words,
                "duration": round(self.duration, 3), "error": self.error}  # fmt: skip


@dataclass
class _Source:
    """One input resolved: where its audio comes from and how long it is."""

    result: Result
    path: Path | None = None
    offset: float = 0.0
    samples: Tensor | None = None  # (N,) in-memory inputs only
    chunks: list[tuple[float, float, list[Word]]] = field(default_factory=list)


def load_model(path: str | Path, device: str = "cpu") -> Transcriber:
    """A `Transcriber` for the model bundle at `path` ("auto" device: CUDA when available)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is available")
    return Transcriber(load_bundle(path, device), device)


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
        beam_size: int = 1,
        lm: str | None = None,
        lexicon: str | None = None,
        lm_weight: float = DecodingOptions.lm_weight,
        word_score: float = DecodingOptions.word_score,
        beam_threshold: float = DecodingOptions.beam_threshold,
    ) -> list[Result]:
        """Results in input order for paths, `AudioSegment`s or `(samples, rate)` pairs (or one).

        beam_size 1 without lm or lexicon is greedy decoding; see `DecodingOptions` for the rest.
        Bad options raise ValueError; a bad input gets a `Result` with its `error` set.
        """
        options = DecodingOptions(beam_size, lm, lexicon, lm_weight, word_score, beam_threshold)
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
            for batch in _batches(pieces, batch_seconds):
                self._transcribe_batch(batch, decoder)
        for source in sources:
            if source.result.error is None:
                source.result.words = stitch_chunks(source.chunks)
                source.result.text = " ".join(w.word for w in source.result.words)
            source.chunks = []
        return [source.result for source in sources]

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


def _batches(pieces: list, batch_seconds: float) -> list[list]:
    """Consecutive runs of pieces (longest first) whose padded length stays <= batch_seconds."""
    batches: list[list] = []
    for piece in pieces:
        if batches and batches[-1][0][2] * (len(batches[-1]) + 1) <= batch_seconds:
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


# --------------------------------------------------------------------------------------------
# Output formats


def format_result(result: Result, fmt: str) -> str:
    """`result` as the text of a .txt, .json, .srt or .vtt file."""
    if fmt == "txt":
        return result.text + "\n"
    if fmt == "json":
        return json.dumps(result.to_dict(), ensure_ascii=False, indent=1) + "\n"
    cues = [
        f"{_timestamp(ws[0].start, fmt)} --> {_timestamp(ws[-1].end, fmt)}\n"
        f"{' '.join(w.word for w in ws)}\n"
        for ws in subtitle_cues(result.words)
    ]
    if fmt == "srt":
        return "\n".join(f"{n}\n{cue}" for n, cue in enumerate(cues, start=1))
    return "WEBVTT\n\n" + "\n".join(cues)


def subtitle_cues(words: list[Word]) -> list[list[Word]]:
    """Words grouped into cues of at most 7 s and 42 characters, split at pauses over 1 s."""
    cues: list[list[Word]] = []
    for w in words:
        cue = cues[-1] if cues else None
        if (
            cue is None
            or w.end - cue[0].start > CUE_MAX_SECONDS
            or len(" ".join(x.word for x in [*cue, w])) > CUE_MAX_CHARS
            or w.start - cue[-1].end > CUE_MAX_GAP
        ):
            cues.append([w])
        else:
            cue.append(w)
    return cues


def _timestamp(seconds: float, fmt: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, m, s = ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60
    return f"{h:02d}:{m:02d}:{s:02d}{',' if fmt == 'srt' else '.'}{ms % 1000:03d}"


# --------------------------------------------------------------------------------------------
# `asr transcribe`


def add_transcribe_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr transcribe`."""
    parser.description = (
        "Transcribe audio files of any length. Without --output-dir the text goes to stdout: "
        "just the text for a single file argument, otherwise one `path<TAB>text` line per file "
        "(--format json: one JSON object per line). Errors go to stderr, one line per failed "
        "input, and make the exit status 1; the other inputs are still transcribed."
    )
    parser.add_argument("inputs", nargs="*", metavar="FILE_OR_DIR",
                        help="audio files, or folders searched for audio files")  # fmt: skip
    parser.add_argument("--model", required=True, help="model bundle (model.pt)")
    parser.add_argument("--output-dir", type=Path,
                        help="write <stem>.<format> per input here (sub-folders kept)")  # fmt: skip
    parser.add_argument("--format", nargs="+", default=["txt"], metavar="FORMAT",
                        help="one or more of txt json srt vtt (srt/vtt need --output-dir); "
                        "files may follow: --format txt json a.wav")  # fmt: skip
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-seconds", type=float, default=DEFAULT_BATCH_SECONDS,
                        help="padded audio per forward pass (default %(default)s)")  # fmt: skip
    parser.add_argument("--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS,
                        help="longer inputs go in windows this long (default %(default)s)")  # fmt: skip
    parser.add_argument("--chunk-overlap", type=float, default=DEFAULT_CHUNK_OVERLAP,
                        help="seconds shared by neighbouring windows (default %(default)s)")  # fmt: skip
    defaults = DecodingOptions()
    parser.add_argument("--beam-size", type=int, default=defaults.beam_size,
                        help="1: greedy; more: beam search (so are --lm, --lexicon)")  # fmt: skip
    parser.add_argument("--lm", help="KenLM n-gram model, ARPA or binary")
    parser.add_argument("--lexicon", help="words to decode: `word [token ...]` per line "
                        "(default with an ARPA --lm: its words)")  # fmt: skip
    parser.add_argument("--lm-weight", type=float, default=defaults.lm_weight,
                        help="LM log-probability scale (default %(default)s)")  # fmt: skip
    parser.add_argument("--word-score", type=float, default=defaults.word_score,
                        help="added per word (default %(default)s)")  # fmt: skip
    parser.add_argument("--beam-threshold", type=float, default=defaults.beam_threshold)


def transcribe_command(args: argparse.Namespace) -> int:
    """Run `asr transcribe`; 0 when every input was transcribed, else 1."""
    formats, inputs = _split_formats(args.format)
    args.inputs = [*args.inputs, *inputs]  # `--format txt json a.wav`: a.wav is an input
    if not formats:
        return _error(f"--format {args.format[0]!r} is not one of {', '.join(FORMATS)}")
    if not args.inputs:
        return _error("no audio files or folders given")
    if args.output_dir is None and (len(formats) > 1 or formats[0] in ("srt", "vtt")):
        return _error("without --output-dir, choose one --format of txt or json for stdout")
    slots: list[tuple[Path, Path] | str] = []  # (input, output name) or an error, in order
    for arg in args.inputs:
        try:
            found = find_audio_files(arg)
        except AudioError as err:
            slots.append(str(err))
            continue
        for path in found:
            slots.append((path, path.relative_to(arg) if Path(arg).is_dir() else Path(path.name)))
    inputs = [slot[0] for slot in slots if not isinstance(slot, str)]
    decoding = dict(beam_size=args.beam_size, lm=args.lm, lexicon=args.lexicon,
                lm_weight=args.lm_weight, word_score=args.word_score,
                beam_threshold=args.beam_threshold)  # fmt: skip
    try:
        transcriber = load_model(args.model, device=args.device)
        began = time.perf_counter()  # the real-time factor leaves model loading out
        results = transcriber.transcribe(
            inputs, args.batch_seconds, args.chunk_seconds, args.chunk_overlap, **decoding
        )
    except (BundleError, ValueError) as err:
        return _error(str(err))
    bare = len(args.inputs) == 1 and len(slots) == 1 and not Path(args.inputs[0]).is_dir()
    done = iter(results)
    for slot in slots:
        result = None if isinstance(slot, str) else next(done)
        if result is None or result.error is not None:
            _error(slot if result is None else result.error)
        elif args.output_dir is not None:
            for fmt in formats:
                out = args.output_dir / slot[1].with_suffix(f".{fmt}")
                text = format_result(result, fmt)
                atomic_write(out, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        elif formats[0] == "json":
            print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
        else:
            print(result.text if bare else f"{result.path}\t{result.text}", flush=True)
    seconds, audio = time.perf_counter() - began, sum(r.duration for r in results)
    succeeded = sum(r.error is None for r in results)
    rtf = f" (real-time factor {seconds / audio:.3f})" if audio > 0 else ""
    print(
        f"asr transcribe: {succeeded} of {len(slots)} inputs, {audio:.1f} s of "
        f"audio in {seconds:.1f} s{rtf}",
        file=sys.stderr,
    )
    return 0 if succeeded == len(slots) else 1


def _split_formats(values: list[str]) -> tuple[list[str], list[str]]:
    """--format values -> (format names, the inputs argparse put after them)."""
    names = [name for value in values for name in value.split(",") if name]
    count = next((i for i, name in enumerate(names) if name not in FORMATS), len(names))
    return list(dict.fromkeys(names[:count])), names[count:]


def _error(message: str) -> int:
    print(f"asr transcribe: error: {' '.join(message.split())}", file=sys.stderr)
    return 1

"""One file transcribed a step at a time: what the server runs for each request.

The result is that of `Transcriber.transcribe(path)`: the same chunk plan (`plan_chunks`), the
same batches of chunks (as many as fit `batch_seconds`, in plan order) and the same stitching
(`stitch_chunks`, applied to each pair of neighbouring chunks). Running it one batch per step
gives the server two things the one-call path cannot:

- words as they settle: once chunk k+1 is decoded, the cut between chunks k and k+1 is known,
  so chunk k's words can no longer change and are handed to `on_words` (`stream=true`);
- a stop between steps: `should_stop()` is asked before each batch, so a request past its time
  limit, or whose client left, frees its worker within one batch (a few seconds of work at most).

Each chunk is read from the file on its own (`load_audio` with an offset), so memory does not
grow with the length of the file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

from asr.audio import AudioError, audio_duration, load_audio
from asr.inference.decoding import DecodingOptions
from asr.inference.transcribe import (
    DEFAULT_BATCH_SECONDS,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SECONDS,
    Result,
    Transcriber,
    Word,
    batch_pieces,
    plan_chunks,
    stitch_chunks,
)

Chunk = tuple[float, float, list[Word]]  # (start, end, words) in seconds from the file's start


class Stopped(Exception):
    """`should_stop()` said so before a step: the transcription was abandoned."""


def transcribe_stepwise(
    transcriber: Transcriber,
    path: str | Path,
    options: DecodingOptions | None = None,
    *,
    on_words: Callable[[list[Word]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    batch_seconds: float = DEFAULT_BATCH_SECONDS,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    chunk_overlap: float = DEFAULT_CHUNK_OVERLAP,
) -> Result:
    """`transcriber.transcribe(path, ...)[0]`, computed one batch of chunks per step.

    `on_words` gets each word once, in order, as soon as later chunks cannot change it;
    `should_stop` is asked before every step (True raises `Stopped`). A file that cannot be
    read raises `AudioError` (the one-call path puts that message in `Result.error`).
    """
    path = Path(path)
    duration = audio_duration(path)
    plan = plan_chunks(duration, chunk_seconds, chunk_overlap)
    words: list[Word] = []
    previous: Chunk | None = None
    pending: list[Word] = []  # words of `previous` that the chunk before it left to it

    def settle(settled: list[Word]) -> None:
        words.extend(settled)
        if on_words is not None and settled:
            on_words(settled)

    # batched as `Transcriber.transcribe` batches them
    for step in batch_pieces(plan, batch_seconds, lambda chunk: chunk[1]):
        if should_stop is not None and should_stop():
            raise Stopped(f"stopped after {len(words)} words")
        for chunk in _decode(transcriber, path, step, options, batch_seconds, chunk_overlap):
            if previous is None:
                pending = chunk[2]
            else:
                settled, pending = _split_at_cut(previous, pending, chunk)
                settle(settled)
            previous = chunk
    settle(pending)
    text = " ".join(w.word for w in words)
    return Result(id=str(path), path=str(path), text=text, words=words, duration=duration)


def _decode(
    transcriber: Transcriber,
    path: Path,
    step: list[tuple[float, float]],
    options: DecodingOptions | None,
    batch_seconds: float,
    chunk_overlap: float,
) -> list[Chunk]:
    """The chunks of one step, read from the file and decoded in one batch; word times are
    moved from the chunk's start to the file's start."""
    rate = transcriber.sample_rate
    waves = [load_audio(path, rate, start, length) for start, length in step]
    # chunk_seconds=inf: a chunk is decoded whole, never split again (the one-call path does
    # the same), even where resampling made it a sample longer than planned.
    results = transcriber.transcribe(
        [(wave, rate) for wave in waves], batch_seconds, math.inf, chunk_overlap, options=options
    )
    chunks = []
    for (start, _), wave, result in zip(step, waves, results):
        if result.error is not None:
            raise AudioError(result.error)
        shifted = [dataclasses.replace(w, start=w.start + start, end=w.end + start)
                   for w in result.words]  # fmt: skip
        chunks.append((start, start + len(wave) / rate, shifted))
    return chunks


def _split_at_cut(
    previous: Chunk, pending: list[Word], chunk: Chunk
) -> tuple[list[Word], list[Word]]:
    """(the words of `previous` that are final, the words `chunk` keeps so far).

    `stitch_chunks` of the two neighbours places their cut; the previous chunk's final words are
    those on its side of that cut that the cut before it also left to it (`pending`). Words are
    told apart by identity: two chunks can hold equal words.
    """
    kept = stitch_chunks([previous, chunk])
    left = {id(w) for w in pending}
    right = {id(w) for w in chunk[2]}
    return [w for w in kept if id(w) in left], [w for w in kept if id(w) in right]

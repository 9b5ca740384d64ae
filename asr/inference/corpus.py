"""Transcribing utterances of a corpus (`asr.data.corpus`) into transcript records, the one
schema of every transcript file: `asr evaluate --model` writes OUT/transcripts.jsonl with it,
and `asr transcribe --manifest` (one process or many, `asr.jobs`) too, so either's output can be
scored, compared or resumed from the other's. `stream_positions` transcribes them live instead,
each fed to its own `Stream` in pieces, as `asr transcribe --streaming` feeds a file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asr.audio import AudioError, AudioSegment, read_audio
from asr.data.corpus import Corpus
from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.inference.result import Result, transcript_record
from asr.inference.streaming import StreamingOptions, feed
from asr.inference.transcribe import Transcriber

TRANSCRIPTS = "transcripts.jsonl"


def transcribe_positions(
    transcriber: Transcriber,
    corpus: Corpus,
    positions: Sequence[int],
    chunking: ChunkingOptions,
    options: DecodingOptions,
) -> dict[int, dict[str, Any]]:
    """position -> transcript record, for the utterances at `positions` (one engine run: their
    windows are batched together). A row that cannot be decoded gets a record with its error."""
    return transcribe_positions_many(transcriber, corpus, positions, chunking, [options])[0]


def transcribe_positions_many(
    transcriber: Transcriber,
    corpus: Corpus,
    positions: Sequence[int],
    chunking: ChunkingOptions,
    options: Sequence[DecodingOptions],
) -> list[dict[int, dict[str, Any]]]:
    """Per `options[j]`, what `transcribe_positions` gives with it, from one acoustic pass
    (`Transcriber.transcribe_many`)."""
    items = {i: corpus.item(i) for i in positions}
    ready = [i for i in positions if not isinstance(items[i][0], AudioError)]
    rows = transcriber.transcribe_many([items[i][0] for i in ready], chunking, options=options)
    per_options = []
    for results in rows:
        done = dict(zip(ready, results, strict=True))
        records = {}
        for i in positions:
            source, path = items[i]
            if isinstance(source, AudioError):
                result = Result(id=corpus.ids[i], path=path, error=str(source))
            else:
                result = done[i]
            records[i] = transcript_record(result, corpus.ids[i], path)
        per_options.append(records)
    return per_options


def stream_positions(
    transcriber: Transcriber,
    corpus: Corpus,
    positions: Sequence[int],
    streaming: StreamingOptions,
    options: DecodingOptions,
) -> dict[int, dict[str, Any]]:
    """position -> transcript record, each utterance transcribed live: fed to a `Stream`
    (`streaming`'s chunk, look-ahead and left context) in pieces of `streaming.piece_ms`, its
    final result decoded with `options`. A row that cannot be read gets a record with its error;
    a model that cannot stream raises ValueError (one line)."""
    records = {}
    for i in positions:
        source, path = corpus.item(i)
        try:
            if isinstance(source, AudioError):
                raise source
            samples, rate = _samples(source)
            stream = transcriber.stream(streaming.chunk_ms, streaming.left_seconds,
                                        options=options, id=corpus.ids[i],
                                        lookahead_ms=streaming.lookahead_ms)  # fmt: skip
            feed(stream, samples, rate, streaming.piece_ms)
            result = stream.finish()
        except AudioError as err:
            result = Result(id=corpus.ids[i], path=path, error=str(err))
        records[i] = transcript_record(result, corpus.ids[i], path)
    return records


def _samples(source: Any) -> tuple[Any, int]:
    """A corpus item (`Corpus.item`: an `AudioSegment` or `(samples, rate)`) -> (samples as
    soundfile gives them, rate), for `feed`."""
    if isinstance(source, AudioSegment):
        return read_audio(source.path, source.offset, source.duration)
    samples, rate = source
    return samples, int(rate)

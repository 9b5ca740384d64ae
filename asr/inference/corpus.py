"""Transcribing utterances of a corpus (`asr.data.corpus`) into transcript records, the one
schema of every transcript file: `asr evaluate --model` writes OUT/transcripts.jsonl with it,
and `asr transcribe --manifest` (one process or many, `asr.jobs`) too, so either's output can be
scored, compared or resumed from the other's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asr.audio import AudioError
from asr.data.corpus import Corpus
from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.inference.result import Result, transcript_record
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

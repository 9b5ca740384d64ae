"""One file transcribed a step at a time, for the server: the engine with a stop and words as
they settle (`asr.inference.engine`), and a file that cannot be read raised as `AudioError`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from asr.audio import AudioError
from asr.inference.engine import Stopped
from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.inference.transcribe import Result, Transcriber, Word

__all__ = ["Stopped", "transcribe_stepwise"]


def transcribe_stepwise(
    transcriber: Transcriber,
    path: str | Path,
    options: DecodingOptions | None = None,
    *,
    on_words: Callable[[list[Word]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    chunking: ChunkingOptions | None = None,
    **chunking_fields: float,
) -> Result:
    """`transcriber.transcribe(path)[0]`: `on_words` gets each word once, in order, as soon as
    later chunks cannot change it; `should_stop` is asked before every step (True raises
    `Stopped`). A file that cannot be read raises `AudioError`."""
    result = transcriber.transcribe(
        Path(path),
        chunking,
        options=options or DecodingOptions(),
        should_stop=should_stop,
        on_words=None if on_words is None else lambda _, words: on_words(words),
        **chunking_fields,
    )[0]
    if result.error is not None:
        raise AudioError(result.error)
    return result

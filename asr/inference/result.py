"""`Result`: the transcript of one input, as offline and streaming transcription return it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asr.inference.alignment import Word


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


def transcript_record(result: Result, id: str, path: str | None) -> dict[str, Any]:
    """One line of every transcript file (`asr transcribe --manifest`, `asr evaluate --model`):
    `Result.to_dict()` with the corpus's id and audio path."""
    return {**result.to_dict(), "id": id, "path": path}

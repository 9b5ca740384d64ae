"""A transcript in the shapes of OpenAI's transcription API, and its error and event shapes.

`response_format` = json (`{"text"}` with usage), text, srt, vtt (`asr.inference.formats`, the
same files `asr transcribe` writes) or verbose_json (`task, language, duration, text,
segments[], words[]`). Segments are the subtitle cues of `formats.subtitle_cues`; each word
carries our `confidence` beside OpenAI's `word, start, end`. Fields this model has no value for
are filled honestly: `tokens` empty, `temperature` 0 (no sampling), `no_speech_prob` 0 (not
estimated). Streaming (`stream=true`) uses OpenAI's server-sent events `transcript.text.delta`
and `transcript.text.done`. Errors are `ApiError`s, which the client gets as `{"error":
{"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from asr.inference.alignment import Word
from asr.inference.formats import format_result, subtitle_cues
from asr.inference.transcribe import Result

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",  # what OpenAI sends for srt
    "vtt": "text/vtt; charset=utf-8",
}
# OpenAI's `text` format is ours (`format_result(..., "txt")`); the others share their names.
_FILE_FORMATS = {"text": "txt", "srt": "srt", "vtt": "vtt"}


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object: `type` is e.g. invalid_request_error, `param` the field at fault."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ApiError(HTTPException):
    """An error the client hears as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.body = error_body(message, type, param, code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, self.status_code, self.headers)


def transcription_body(
    result: Result, response_format: str, granularities: tuple[str, ...], language: str | None
) -> str:
    """The response body of a finished transcription in `response_format`."""
    if response_format in _FILE_FORMATS:
        return format_result(result, _FILE_FORMATS[response_format])
    if response_format == "json":
        body: dict[str, Any] = {"text": result.text, "usage": usage(result)}
    else:
        body = verbose_json(result, granularities, language)
    return json.dumps(body, ensure_ascii=False)


def verbose_json(
    result: Result, granularities: tuple[str, ...], language: str | None
) -> dict[str, Any]:
    """`task, language, duration, text` and, as asked, `segments` and `words` (OpenAI gives
    segments unless only words are asked for). `language` is what the client declared: this
    model does not detect one."""
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": language or "unknown",
        "duration": round(result.duration, 3),
        "text": result.text,
    }
    if "segment" in granularities or not granularities:
        body["segments"] = [_segment(i, cue) for i, cue in enumerate(subtitle_cues(result.words))]
    if "word" in granularities:
        body["words"] = [_word(w) for w in result.words]
    body["usage"] = usage(result)
    return body


def usage(result: Result) -> dict[str, Any]:
    """Billing-style usage as OpenAI reports it for audio: whole seconds of input."""
    return {"type": "duration", "seconds": math.ceil(result.duration)}


def _word(w: Word) -> dict[str, Any]:
    return {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
            "confidence": round(w.confidence, 3)}  # fmt: skip


def _segment(index: int, words: list[Word]) -> dict[str, Any]:
    text = " ".join(w.word for w in words)
    encoded = text.encode("utf-8")
    return {
        "id": index,
        "seek": 0,
        "start": round(words[0].start, 3),
        "end": round(words[-1].end, 3),
        "text": text,
        "tokens": [],
        "temperature": 0.0,
        # The mean log word confidence; confidences are geometric means of token posteriors.
        "avg_logprob": round(sum(math.log(max(w.confidence, 1e-9)) for w in words) / len(words), 4),
        # Whisper's repetition check: text length over its zlib-compressed length.
        "compression_ratio": round(len(encoded) / len(zlib.compress(encoded)), 3),
        "no_speech_prob": 0.0,
    }


def sse(event: dict[str, Any]) -> str:
    """One server-sent event carrying `event` as JSON (OpenAI's streams send `data:` only)."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def delta_event(words: list[Word], first: bool) -> dict[str, Any]:
    """`transcript.text.delta`: the settled words, with the space that joins them to the last."""
    text = " ".join(w.word for w in words)
    return {"type": "transcript.text.delta", "delta": text if first else " " + text}


def done_event(result: Result) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": result.text, "usage": usage(result)}

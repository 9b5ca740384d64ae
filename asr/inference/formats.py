"""Output formats of a transcript: plain text, JSON, SubRip (SRT) and WebVTT subtitles.

Subtitle cues group words into lines a viewer can read: at most 7 s and 42 characters (the
common broadcast guideline), split at pauses over 1 s.
"""

from __future__ import annotations

import json

from asr.inference.alignment import Word
from asr.inference.result import Result

FORMATS = ("txt", "json", "srt", "vtt")
CUE_MAX_SECONDS, CUE_MAX_CHARS, CUE_MAX_GAP = 7.0, 42, 1.0


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

"""Manifests: the utterances of a corpus, read, written and filtered for CTC training.

A manifest is a JSONL file, one utterance a line:
`{"audio": path, "text": str, "duration": seconds}` with optional `"offset"` (seconds into the
file), `"speaker"` and `"id"`. Relative audio paths are relative to the manifest's folder.

Here: `Utterance`, `read_manifest` / `write_manifest`, `ctc_min_frames`, `skip_reason` and
`filter_utterances` (drops what a CTC model cannot learn from). Datasets and collation are in `asr.data.dataset`,
the duration-bucketing sampler in `asr.data.sampler`, Hugging Face sources in `asr.data.hf`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MAX_DURATION_S = 86400.0  # a "duration" above one day is a unit mistake (ms, samples), not audio
MAX_LISTED = 20  # problems listed one by one in a warning; the rest are counted
UNKNOWN_CHARS = "text has characters unknown to the tokenizer"


@dataclass(frozen=True)
class Utterance:
    """One transcribed stretch of audio: [offset, offset + duration) seconds of `audio`."""

    id: str
    audio: str  # absolute path
    text: str
    duration: float
    offset: float = 0.0
    speaker: str | None = None


# --------------------------------------------------------------------------------------------
# Manifests


def read_manifest(path: str | Path, problems: list[str] | None = None) -> list[Utterance]:
    """The utterances of a JSONL manifest; bad lines and duplicate ids are reported and skipped
    (and, given a `problems` list, each appended to it as "path:line: why")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest file not found: {path}")
    folder = path.parent.absolute()
    utterances: dict[str, Utterance] = {}
    first_line: dict[str, int] = {}
    problems = [] if problems is None else problems
    already = len(problems)
    with path.open("rb") as f:  # decoded line by line: one bad byte costs one line, not the file
        for line_no, raw in enumerate(f, start=1):
            try:
                line = _decode_line(raw, line_no)
                if not line.strip():
                    continue
                utt = _parse_line(line, folder)
            except ValueError as err:
                problems.append(f"{path}:{line_no}: {err}")
                continue
            if utt.id in utterances:
                problems.append(
                    f"{path}:{line_no}: duplicate id {utt.id!r} (first on line "
                    f"{first_line[utt.id]}), dropped"
                )
                continue
            utterances[utt.id] = utt
            first_line[utt.id] = line_no
    if len(problems) > already:
        mine = problems[already:]
        log.warning(problem_report(f"manifest {path}: skipped {len(mine)} line(s)", mine))
    return list(utterances.values())


def problem_report(headline: str, problems: list[str]) -> str:
    """A warning of many lines: the headline, the first MAX_LISTED problems, then a count."""
    lines = [headline + ":", *problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"... and {len(problems) - MAX_LISTED} more")
    return "\n  ".join(lines)


def _decode_line(raw: bytes, line_no: int) -> str:
    try:
        # "utf-8-sig" on line 1: Windows editors put a byte-order mark in front of the file.
        return raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
        ) from None


def _parse_line(line: str, folder: Path) -> Utterance:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg})") from None
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply)") from None
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    for key in ("audio", "text", "duration"):
        if key not in item:
            raise ValueError(f"missing field {key!r}")
    audio, text = item["audio"], item["text"]
    if not isinstance(audio, str) or not audio:
        raise ValueError(f"'audio' must be a non-empty string, got {audio!r}")
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {text!r}")
    duration = _number(item, "duration")
    if not 0.0 < duration <= MAX_DURATION_S:
        raise ValueError(f"'duration' must be in (0, {MAX_DURATION_S:g}] seconds, got {duration}")
    offset = _number(item, "offset") if item.get("offset") is not None else None
    if offset is not None and not 0.0 <= offset <= MAX_DURATION_S:
        raise ValueError(f"'offset' must be in [0, {MAX_DURATION_S:g}] seconds, got {offset}")
    speaker = item.get("speaker")
    if speaker is not None and (isinstance(speaker, bool) or not isinstance(speaker, str | int)):
        raise ValueError(f"'speaker' must be a string, got {speaker!r}")
    utt_id = item.get("id")
    if utt_id is None:
        utt_id = Path(audio).stem + ("" if offset is None else f"_{_seconds_str(offset)}")
    elif not isinstance(utt_id, str) or not utt_id:
        raise ValueError(f"'id' must be a non-empty string, got {utt_id!r}")
    return Utterance(
        id=utt_id,
        audio=os.path.normpath(folder / os.path.expanduser(audio)),
        text=text,
        duration=duration,
        offset=offset or 0.0,
        speaker=None if speaker is None else str(speaker),
    )


def _number(item: dict[str, Any], key: str) -> float:
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{key!r} must be finite, got {value}")
    return float(value)


def _seconds_str(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def write_manifest(utterances: Iterable[Utterance], path: str | Path) -> None:
    """Write a JSONL manifest; audio under the manifest's folder is written relative to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.absolute()
    with path.open("w", encoding="utf-8") as f:
        for utt in utterances:
            audio = Path(utt.audio)
            if audio.is_relative_to(folder):
                audio = audio.relative_to(folder)
            item: dict[str, Any] = {"id": utt.id, "audio": audio.as_posix(), "text": utt.text}
            item["duration"] = utt.duration
            if utt.offset:
                item["offset"] = utt.offset
            if utt.speaker is not None:
                item["speaker"] = utt.speaker
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------
# Filtering


def ctc_min_frames(tokens: Sequence[int]) -> int:
    """Output frames CTC needs for `tokens`: one each, plus a blank between adjacent repeats."""
    repeats = sum(1 for a, b in itertools.pairwise(tokens) if a == b)
    return len(tokens) + repeats


def filter_utterances(
    utterances: Iterable[Utterance],
    tokenizer: Tokenizer,
    frames_for_duration: Callable[[float], int],
    min_duration: float,
    max_duration: float,
    check_files: bool = True,
) -> tuple[list[Utterance], dict[str, list[str]]]:
    """Keep the utterances a CTC model can train on; `skipped` maps each reason to the ids.

    `frames_for_duration(seconds)` is the model's number of output frames for that much audio.
    """
    kept: list[Utterance] = []
    skipped: dict[str, list[str]] = {}
    unknown: dict[str, list[str]] = {}  # character -> ids of the utterances that have it
    file_exists: dict[str, bool] = {}
    for utt in utterances:
        if check_files and utt.audio not in file_exists:
            file_exists[utt.audio] = os.path.isfile(utt.audio)
        reason = skip_reason(utt, tokenizer, frames_for_duration, min_duration, max_duration)
        if reason is None and check_files and not file_exists[utt.audio]:
            reason = "missing audio file"
        if reason is None:
            kept.append(utt)
        else:
            skipped.setdefault(reason, []).append(utt.id)
        if reason == UNKNOWN_CHARS:
            for char in tokenizer.unknown_chars(utt.text):
                unknown.setdefault(char, []).append(utt.id)
    if skipped:
        total = len(kept) + sum(len(ids) for ids in skipped.values())
        parts = [
            f"{reason}: {len(ids)} (e.g. {', '.join(ids[:3])})" for reason, ids in skipped.items()
        ]
        parts += [
            f"unknown character {char!r} (U+{ord(char):04X}) in {len(ids)} (e.g. "
            f"{', '.join(ids[:3])})"
            for char, ids in sorted(unknown.items(), key=lambda item: -len(item[1]))
        ]
        log.warning(problem_report(f"kept {len(kept)} of {total} utterances; skipped", parts))
    return kept, skipped


def skip_reason(
    utt: Utterance,
    tokenizer: Tokenizer,
    frames_for_duration: Callable[[float], int] | None,
    min_duration: float,
    max_duration: float,
) -> str | None:
    """Why a CTC model cannot train on `utt` (its duration and text only), or None."""
    if utt.duration < min_duration:
        return f"shorter than min_duration={min_duration}s"
    if utt.duration > max_duration:
        return f"longer than max_duration={max_duration}s"
    if tokenizer.unknown_chars(utt.text):
        return UNKNOWN_CHARS
    tokens = tokenizer.encode(utt.text)
    if not tokens:
        return "empty transcript"
    if frames_for_duration is not None and frames_for_duration(utt.duration) < ctc_min_frames(
        tokens
    ):
        return "audio too short for its transcript under CTC"
    return None

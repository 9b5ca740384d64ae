"""Utterances in, padded batches out: manifests, filtering, datasets, `Batch`, bucketing sampler.

A manifest is a JSONL file, one utterance a line:
`{"audio": path, "text": str, "duration": seconds}` with optional `"offset"` (seconds into the
file), `"speaker"` and `"id"`. Relative audio paths are relative to the manifest's folder.

Shapes: B batch, N samples (padded to the longest wave), S tokens (padded to the longest target).

Here, in pipeline order: `Utterance`, `read_manifest` / `write_manifest`, `filter_utterances`
(drops what a CTC model cannot learn from), `AudioDataset`, `Batch` and `collate`. The batch sampler is in `asr.sampler`, Hugging Face
datasets in `asr.hf_data`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.audio import AudioError, load_audio
from asr.text import normalize_text
from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MAX_DURATION_S = 86400.0  # a "duration" above one day is a unit mistake (ms, samples), not audio
MAX_LISTED = 20  # problems listed one by one in a warning; the rest are counted
# Audio may end this much before its manifest duration says (durations rounded, or measured by
# another decoder); more means a truncated file or a wrong manifest, and the utterance is skipped.
DURATION_SLACK_S = 0.1
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


def read_manifest(path: str | Path) -> list[Utterance]:
    """The utterances of a JSONL manifest; bad lines and duplicate ids are reported and skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest file not found: {path}")
    folder = path.parent.absolute()
    utterances: dict[str, Utterance] = {}
    first_line: dict[str, int] = {}
    problems: list[str] = []
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
    if problems:
        log.warning(_problem_report(f"manifest {path}: skipped {len(problems)} line(s)", problems))
    return list(utterances.values())


def _problem_report(headline: str, problems: list[str]) -> str:
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
        reason = _skip_reason(utt, tokenizer, frames_for_duration, min_duration, max_duration)
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
        log.warning(_problem_report(f"kept {len(kept)} of {total} utterances; skipped", parts))
    return kept, skipped


def _skip_reason(
    utt: Utterance,
    tokenizer: Tokenizer,
    frames_for_duration: Callable[[float], int],
    min_duration: float,
    max_duration: float,
) -> str | None:
    if utt.duration < min_duration:
        return f"shorter than min_duration={min_duration}s"
    if utt.duration > max_duration:
        return f"longer than max_duration={max_duration}s"
    if tokenizer.unknown_chars(utt.text):
        return UNKNOWN_CHARS
    tokens = tokenizer.encode(utt.text)
    if not tokens:
        return "empty transcript"
    if frames_for_duration(utt.duration) < ctc_min_frames(tokens):
        return "audio too short for its transcript under CTC"
    return None


# --------------------------------------------------------------------------------------------
# Datasets, Batch, collate


def _augment_rng(seed: int, epoch: int, index: int) -> random.Random:
    # A string seed is hashed with SHA-512: the same stream in every process and every run.
    return random.Random(f"{seed}:{epoch}:{index}")


class AudioDataset(torch.utils.data.Dataset):
    """Utterances -> `{"id", "wave" (N,), "tokens" (S,), "text"}`, or None if audio is unreadable.

    `text` is the normalized transcript the tokens encode. Pass the utterances through
    `filter_utterances` first: text the tokenizer cannot encode raises `ValueError`. Waveform
    augmentation draws from a `random.Random` seeded by (seed, epoch, index), so a resumed run
    sees the same perturbations; call `set_epoch` each epoch (DataLoader workers that are not
    persistent get the new epoch, persistent ones keep the old). `num_failed` counts the
    unreadable files of this process (each DataLoader worker has its own count).
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizer: Tokenizer,
        sample_rate: int = 16000,
        wave_augment: Callable[[Tensor, random.Random], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        self.utterances = list(utterances)
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.wave_augment = wave_augment
        self.seed = seed
        self.epoch = 0
        self.num_failed = 0

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def durations(self) -> list[float]:
        return [utt.duration for utt in self.utterances]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        utt = self.utterances[index]
        try:
            wave = load_audio(utt.audio, self.sample_rate, offset=utt.offset, duration=utt.duration)
        except AudioError as err:
            self.num_failed += 1
            log.warning("skipping utterance %r: %s", utt.id, err)
            return None
        missing = utt.duration - wave.shape[0] / self.sample_rate
        if missing > DURATION_SLACK_S:  # silently training on part of the audio: never
            self.num_failed += 1
            log.warning(
                "skipping utterance %r: '%s' ends %.3f s after offset %g s, but the manifest says "
                "%g s (a truncated file, or a wrong duration in the manifest)",
                utt.id,
                utt.audio,
                wave.shape[0] / self.sample_rate,
                utt.offset,
                utt.duration,
            )
            return None
        return _make_item(self, utt.id, wave, utt.text, index)


def _make_item(
    dataset: Any,  # AudioDataset or one of asr.hf_data's datasets
    utt_id: str,
    wave: Tensor,
    text: str,
    index: int,
) -> dict[str, Any]:
    if dataset.wave_augment is not None:
        wave = dataset.wave_augment(wave, _augment_rng(dataset.seed, dataset.epoch, index))
    try:
        tokens = torch.tensor(dataset.tokenizer.encode(text), dtype=torch.long)  # (S,)
    except ValueError as err:  # unknown characters: name the utterance, not only its text
        raise ValueError(f"utterance {utt_id!r}: {err}") from None
    return {"id": utt_id, "wave": wave, "tokens": tokens, "text": normalize_text(text)}


@dataclass
class Batch:
    """Padded waveforms and targets, each with its lengths (padding is 0)."""

    waves: Tensor  # (B, N) float32
    wave_lengths: Tensor  # (B,) long
    targets: Tensor  # (B, S) long
    target_lengths: Tensor  # (B,) long
    texts: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            waves=self.waves.to(device, non_blocking=non_blocking),
            wave_lengths=self.wave_lengths.to(device, non_blocking=non_blocking),
            targets=self.targets.to(device, non_blocking=non_blocking),
            target_lengths=self.target_lengths.to(device, non_blocking=non_blocking),
            texts=self.texts,
            ids=self.ids,
        )


def collate(items: Sequence[dict[str, Any] | None]) -> Batch | None:
    """Dataset items -> a `Batch`; `None` items (unreadable audio) are dropped, all None -> None."""
    items = [item for item in items if item is not None]
    if not items:
        return None
    waves = [item["wave"].float() for item in items]
    tokens = [item["tokens"].long() for item in items]
    return Batch(
        waves=torch.nn.utils.rnn.pad_sequence(waves, batch_first=True),  # (B, N)
        wave_lengths=torch.tensor([w.shape[0] for w in waves], dtype=torch.long),
        targets=torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True),  # (B, S)
        target_lengths=torch.tensor([t.shape[0] for t in tokens], dtype=torch.long),
        texts=[item["text"] for item in items],
        ids=[item["id"] for item in items],
    )

"""Server-side turn detection for live captions (`live`): where an utterance starts and ends,
from the energy of the audio.

This is a plain energy detector, not a speech model: a 10 ms frame is speech when its RMS
reaches 0.04 x `threshold` of full scale (-34 dBFS at OpenAI's default threshold 0.5; the
threshold keeps OpenAI's name and range, not its meaning, a speech probability). An utterance
starts at the first speech frame, with `prefix_padding_ms` of the audio before it, and ends after
`silence_duration_ms` of frames without speech, the trailing silence included. Steady noise above
the level (a fan, a loud room) reads as speech: raise the threshold, or commit from the client.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FRAME_SECONDS = 0.01  # the detector's frame
SPEECH_RMS = 0.04  # RMS of full scale at threshold 1.0


VAD_DEFAULTS = {"threshold": 0.5, "silence_duration_ms": 500, "prefix_padding_ms": 300}


def turn_detection(given: Any) -> dict[str, Any] | None:
    """A session's `turn_detection`: None, or server_vad with its three numbers filled in;
    ValueError naming a field this server cannot follow."""
    if given is None:
        return None
    if not isinstance(given, dict) or given.get("type", "server_vad") != "server_vad":
        kind = given.get("type") if isinstance(given, dict) else given
        raise ValueError(f"turn_detection {kind!r}: only null (the client commits) or "
                         "{'type': 'server_vad'} (an energy detector)")  # fmt: skip
    settings: dict[str, Any] = {"type": "server_vad"}
    for key, default in VAD_DEFAULTS.items():
        value = given.get(key, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"turn_detection.{key} {value!r}: expected a number >= 0")
        settings[key] = value
    return settings


class EnergyVad:
    """Server-side turn detection by frame energy (see the module docstring). `push(samples)`
    gives the actions the samples lead to, in order: ("start", prefix and speech, audio_start_ms),
    ("audio", samples, 0), ("stop", trailing samples, audio_end_ms)."""

    def __init__(self, rate: int, threshold: float, silence_ms: float, prefix_ms: float,
                 speaking: bool, position: int) -> None:  # fmt: skip
        self.frame = max(1, round(rate * FRAME_SECONDS))
        self.rate = rate
        self.level = SPEECH_RMS * threshold
        self.silence_frames = max(1, math.ceil(silence_ms / 1000 / FRAME_SECONDS))
        self.prefix_samples = round(prefix_ms / 1000 * rate)
        self.speaking = speaking
        self.silent = 0  # frames without speech since the last speech frame
        self.pending = np.zeros(0, np.int16)  # less than a frame, not yet judged
        self.prefix = np.zeros(0, np.int16)  # audio before speech, at most prefix_samples
        self.position = position  # samples judged in the session

    @classmethod
    def make(
        cls, settings: dict[str, Any] | None, rate: int, speaking: bool, position: int
    ) -> EnergyVad | None:
        """A detector for a session's `turn_detection` (None: none), `position` samples in."""
        if settings is None:
            return None
        return cls(rate, settings["threshold"], settings["silence_duration_ms"],
                   settings["prefix_padding_ms"], speaking, position)  # fmt: skip

    def reset(self) -> None:
        """The client ended or dropped the utterance: wait for speech again."""
        self.speaking, self.silent, self.prefix = False, 0, self.prefix[:0]

    def push(self, samples: np.ndarray) -> list[tuple[str, np.ndarray, int]]:
        audio = np.concatenate([self.pending, samples])
        whole = len(audio) // self.frame * self.frame
        self.pending = audio[whole:]
        actions: list[tuple[str, np.ndarray, int]] = []
        run: list[np.ndarray] = []  # speech-state frames not yet handed out
        for start in range(0, whole, self.frame):
            frame = audio[start : start + self.frame]
            loud = np.sqrt(np.mean((frame.astype(np.float32) / 32768) ** 2)) >= self.level
            self.position += len(frame)
            if not self.speaking:
                if not loud:
                    self.prefix = np.concatenate([self.prefix, frame])[-self.prefix_samples :]
                    if self.prefix_samples == 0:
                        self.prefix = self.prefix[:0]
                    continue
                began = self.position - len(frame) - len(self.prefix)
                actions.append(("start", np.concatenate([self.prefix, frame]), self._ms(began)))
                self.prefix, self.speaking, self.silent = self.prefix[:0], True, 0
                continue
            run.append(frame)
            self.silent = 0 if loud else self.silent + 1
            if self.silent >= self.silence_frames:
                actions.append(("stop", np.concatenate(run), self._ms(self.position)))
                run, self.speaking = [], False
        if run:
            actions.append(("audio", np.concatenate(run), 0))
        return actions

    def _ms(self, samples: int) -> int:
        return round(samples * 1000 / self.rate)

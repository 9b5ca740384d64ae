"""Datasets and collation: utterances in, padded `Batch`es out.

Shapes: B batch, N samples (padded to the longest wave), S tokens (padded to the longest target).

Here: `AudioDataset` (manifest utterances), `load_utterance` and `check_duration` (how an
utterance's audio is read and checked, for training and for `asr pack`), `make_item` (the one
place a waveform and its text become a training item: waveform augmentation and tokenization;
the Hugging Face datasets of `asr.data.hf` use it too), `Batch` and `collate`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from asr.audio import AudioError, load_audio
from asr.data.manifest import Utterance
from asr.text import normalize_text
from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Audio may end this much before its manifest duration says (durations rounded, or measured by
# another decoder); more means a truncated file or a wrong manifest, and the utterance is skipped.
DURATION_SLACK_S = 0.1


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
            wave = load_utterance(utt, self.sample_rate)
        except AudioError as err:
            self.num_failed += 1
            log.warning("skipping utterance %r: %s", utt.id, err)
            return None
        return make_item(self, utt.id, wave, utt.text, index)


def load_utterance(utt: Utterance, sample_rate: int = 16000) -> Tensor:
    """The utterance's samples (N,) at `sample_rate`, checked as training needs them: AudioError
    for unreadable audio, and for audio that ends well before the manifest's duration."""
    wave = load_audio(utt.audio, sample_rate, offset=utt.offset, duration=utt.duration)
    check_duration(wave, sample_rate, utt.duration, utt.offset, utt.audio)
    return wave


def check_duration(
    wave: Tensor, sample_rate: int, duration: float, offset: float, name: str
) -> None:
    """AudioError when `wave` is more than DURATION_SLACK_S shorter than its stated duration:
    silently training on part of the audio, never."""
    seconds = wave.shape[0] / sample_rate
    if duration - seconds > DURATION_SLACK_S:
        raise AudioError(
            f"'{name}' ends {seconds:.3f} s after offset {offset:g} s, but the manifest says "
            f"{duration:g} s (a truncated file, or a wrong duration in the manifest)"
        )


def make_item(
    dataset: Any,  # AudioDataset or one of asr.data.hf's datasets
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
    # A streamed batch's place in its stream (`asr.data.stream`), for exact resume; else None.
    position: dict[str, Any] | None = None

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
            position=self.position,
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

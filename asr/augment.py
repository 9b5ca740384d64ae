"""Data augmentation, length-aware.

Here: `SpecAugment` (frequency and time masking of log-mel features, Park et al. 2019,
"SpecAugment: A Simple Data Augmentation Method for Automatic Speech Recognition"; time masks
scale with each utterance's own length, the "adaptive" masks of Park et al. 2020), and the
waveform side: `speed_perturb` (resampling, as Kaldi's 0.9/1.0/1.1 speed perturbation, Ko et al.
2015), `add_noise` at a given SNR, and `WaveAugment`, which draws both from an `AugmentConfig`.

Shapes: B batch, T frames, F mel bands, N samples.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn

from asr.audio import audio_duration, load_audio
from asr.config import AugmentConfig


class SpecAugment(nn.Module):
    """Zero `freq_masks` bands of width <= `freq_mask_width` and `time_masks` spans of width
    <= `time_mask_max_ratio` * (that utterance's length), inside the valid frames only.

    Zero is the mean of normalized features. Identity in eval mode.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_mask_width: int = 27,
        time_masks: int = 10,
        time_mask_max_ratio: float = 0.05,
    ) -> None:
        super().__init__()
        if freq_masks < 0 or time_masks < 0 or freq_mask_width < 0:
            raise ValueError(
                f"SpecAugment: freq_masks={freq_masks}, time_masks={time_masks} and "
                f"freq_mask_width={freq_mask_width} must be >= 0"
            )
        if not 0.0 <= time_mask_max_ratio <= 1.0:
            raise ValueError(
                f"SpecAugment: time_mask_max_ratio must be in [0, 1], got {time_mask_max_ratio}"
            )
        self.freq_masks = freq_masks
        self.freq_mask_width = freq_mask_width
        self.time_masks = time_masks
        self.time_mask_max_ratio = time_mask_max_ratio

    @classmethod
    def from_config(cls, config: AugmentConfig) -> SpecAugment:
        return cls(
            freq_masks=config.freq_masks,
            freq_mask_width=config.freq_mask_width,
            time_masks=config.time_masks,
            time_mask_max_ratio=config.time_mask_max_ratio,
        )

    def forward(
        self, feats: Tensor, feat_lengths: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """feats (B, T, F), feat_lengths (B,) -> feats (B, T, F), masked in train mode.

        `generator` (on the CPU) makes the masks reproducible.
        """
        if not self.training:
            return feats
        B, T, F = feats.shape
        lengths = feat_lengths.detach().cpu().long().clamp(max=T)  # (B,)
        freq_max = torch.full((B,), min(self.freq_mask_width, F), dtype=torch.long)  # (B,)
        freq = _span_masks(self.freq_masks, freq_max, torch.full((B,), F), F, generator)  # (B, F)
        time_max = (self.time_mask_max_ratio * lengths).floor().long()  # (B,)
        time = _span_masks(self.time_masks, time_max, lengths, T, generator)  # (B, T)
        valid = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
        masked = (time[:, :, None] | freq[:, None, :]) & valid[:, :, None]  # (B, T, F)
        return feats.masked_fill(masked.to(feats.device), 0.0)


def _span_masks(
    num: int, max_width: Tensor, extent: Tensor, size: int, generator: torch.Generator | None
) -> Tensor:
    """`num` spans per row, width uniform in [0, max_width_b], inside [0, extent_b) -> (B, size).

    Every row draws its own widths and starts, so the whole batch is masked at once.
    """
    B = max_width.shape[0]
    if num == 0:
        return torch.zeros(B, size, dtype=torch.bool)
    u_width, u_start = torch.rand(2, B, num, generator=generator)  # (B, num) each
    width = (u_width * (max_width[:, None] + 1)).floor().long()  # (B, num)
    width = torch.minimum(width, max_width[:, None])  # guards against rand() == 1 - eps rounding
    room = (extent[:, None] - width + 1).clamp(min=1)  # (B, num) valid start positions
    start = torch.minimum((u_start * room).floor().long(), room - 1)  # (B, num)
    pos = torch.arange(size)[None, None, :]  # (1, 1, size)
    spans = (pos >= start[:, :, None]) & (pos < (start + width)[:, :, None])  # (B, num, size)
    return spans.any(dim=1)


def speed_perturb(wave: Tensor, sample_rate: int, factor: float) -> Tensor:
    """Play `wave` (N,) `factor` times faster: about N / factor samples, pitch times `factor`.

    Resampling from sample_rate * factor to sample_rate, as Kaldi and torchaudio's `speed`;
    the rates are reduced by their gcd (16000 * 1.1 : 16000 = 11 : 10) so the filter is small.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    orig, new = round(sample_rate * factor), int(sample_rate)
    if orig == new:
        return wave
    g = math.gcd(orig, new)
    return torchaudio.functional.resample(wave, orig // g, new // g)


def add_noise(
    wave: Tensor, noise: Tensor, snr_db: float, generator: torch.Generator | None = None
) -> Tensor:
    """wave (N,) + noise (M,) scaled so that power(wave) / power(added noise) is `snr_db`.

    The noise is looped (M < N) or cropped to N samples from a random start. A silent or empty
    noise leaves the wave unchanged.
    """
    N, M = wave.shape[0], noise.shape[0]
    if M == 0 or N == 0:
        return wave
    start = int(torch.randint(M, (1,), generator=generator))
    index = (start + torch.arange(N, device=noise.device)) % M  # (N,)
    segment = noise[index].to(wave.dtype)  # (N,)
    noise_power = segment.double().pow(2).mean()
    if noise_power == 0:
        return wave
    wave_power = wave.double().pow(2).mean()
    scale = torch.sqrt(wave_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return wave + scale.to(wave.dtype) * segment


class WaveAugment:
    """Speed perturbation and additive noise for one waveform, drawn from an `AugmentConfig`.

    `config.noise_manifest` is a JSONL file of `{"audio": path, ...}` lines, paths relative to the
    manifest's folder. Only the headers are read up front; each call reads just the noise
    segment it needs.
    """

    def __init__(self, config: AugmentConfig, sample_rate: int = 16000, seed: int = 0) -> None:
        if not config.speed_factors or any(f <= 0 for f in config.speed_factors):
            raise ValueError(
                f"augment.speed_factors must be positive numbers, got {config.speed_factors}"
            )
        if not 0.0 <= config.noise_prob <= 1.0:
            raise ValueError(f"augment.noise_prob must be in [0, 1], got {config.noise_prob}")
        if config.noise_prob > 0 and config.noise_manifest is None:
            raise ValueError("augment.noise_prob > 0 needs augment.noise_manifest")
        self.config = config
        self.sample_rate = sample_rate
        self.rng = random.Random(seed)  # used when a call passes no rng
        self.noises: list[tuple[Path, float]] = []  # (path, seconds)
        if config.noise_manifest is not None and config.noise_prob > 0:
            self.noises = _read_noise_manifest(Path(config.noise_manifest))

    def __call__(self, wave: Tensor, rng: random.Random | None = None) -> Tensor:
        """wave (N,) -> wave (N',): a random speed, then noise with probability noise_prob."""
        rng = self.rng if rng is None else rng
        wave = speed_perturb(wave, self.sample_rate, rng.choice(self.config.speed_factors))
        if self.noises and rng.random() < self.config.noise_prob:
            low, high = self.config.noise_snr_db
            snr_db = rng.uniform(low, high)
            path, noise_seconds = rng.choice(self.noises)
            seconds = wave.shape[0] / self.sample_rate
            offset = rng.uniform(0.0, max(0.0, noise_seconds - seconds))
            noise = load_audio(path, self.sample_rate, offset=offset, duration=seconds)
            generator = torch.Generator().manual_seed(rng.getrandbits(63))
            wave = add_noise(wave, noise, snr_db, generator)
        return wave


def _read_noise_manifest(manifest: Path) -> list[tuple[Path, float]]:
    if not manifest.is_file():
        raise ValueError(f"augment.noise_manifest: no such file '{manifest}'")
    noises = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("audio"), str):
            raise ValueError(f'{manifest}:{number}: expected an object with an "audio" path')
        path = Path(entry["audio"])
        path = path if path.is_absolute() else manifest.parent / path
        noises.append((path, audio_duration(path)))
    if not noises:
        raise ValueError(f"augment.noise_manifest '{manifest}' lists no noise files")
    return noises

"""Tests for asr/augment.py: SpecAugment masks stay inside each utterance and within their width
bounds, speed perturbation changes length and pitch by the factor, noise lands at the asked SNR,
and WaveAugment is reproducible."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import soundfile
import torch

from asr.augment import SpecAugment, WaveAugment, add_noise, speed_perturb
from asr.config import AugmentConfig

torch.set_num_threads(1)


def _sine(freq: float, rate: int = 16000, seconds: float = 1.0) -> torch.Tensor:
    return 0.5 * torch.sin(2 * torch.pi * freq * torch.arange(int(rate * seconds)) / rate)


def _peak_hz(wave: torch.Tensor, rate: int = 16000) -> float:
    spectrum = torch.fft.rfft(wave.double() * torch.hann_window(len(wave), dtype=torch.float64))
    return float(spectrum.abs().argmax()) * rate / len(wave)


def _snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    noise = (noisy - clean).double()
    return float(10 * torch.log10(clean.double().pow(2).mean() / noise.pow(2).mean()))


def _padded_ones(lengths: list[int], T: int, F: int = 80, pad_value: float = 7.0):
    feats = torch.full((len(lengths), T, F), pad_value)
    for i, n in enumerate(lengths):
        feats[i, :n] = 1.0
    return feats, torch.tensor(lengths)


# ------------------------------------------------------------------------------------------
# SpecAugment


def test_spec_augment_is_identity_in_eval_mode():
    augment = SpecAugment().eval()
    feats = torch.randn(3, 50, 80)
    assert augment(feats, torch.tensor([50, 40, 10])) is feats


def test_spec_augment_masks_in_train_mode_and_is_reproducible_with_a_generator():
    augment = SpecAugment().train()
    feats, lengths = _padded_ones([300, 200], 300)
    out1 = augment(feats, lengths, generator=torch.Generator().manual_seed(0))
    out2 = augment(feats, lengths, generator=torch.Generator().manual_seed(0))
    out3 = augment(feats, lengths, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    assert (out1 == 0).any() and set(out1.unique().tolist()) <= {0.0, 1.0, 7.0}


def test_spec_augment_masks_never_touch_padding():
    augment = SpecAugment(freq_masks=2, freq_mask_width=27, time_masks=10, time_mask_max_ratio=0.2)
    augment.train()
    lengths = [120, 37, 5, 0, 90]
    feats, feat_lengths = _padded_ones(lengths, 120)
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        out = augment(feats, feat_lengths, generator=gen)
        for i, n in enumerate(lengths):
            assert (out[i, n:] == 7.0).all()


def test_time_mask_width_is_bounded_by_ratio_times_each_utterance_length():
    augment = SpecAugment(freq_masks=0, time_masks=1, time_mask_max_ratio=0.05).train()
    lengths = [400, 200, 100, 40, 19] * 40  # 19 frames: bound floor(0.95) = 0, never masked
    bounds = [int(0.05 * n) for n in lengths]
    feats, feat_lengths = _padded_ones(lengths, 400, F=4)
    gen = torch.Generator().manual_seed(0)
    widest = dict.fromkeys(set(lengths), 0)
    for _ in range(10):
        out = augment(feats, feat_lengths, generator=gen)
        masked = out[:, :, 0] == 0  # (B, T); a time mask zeroes whole frames
        assert torch.equal(masked, (out == 0).all(dim=2))
        for i, n in enumerate(lengths):
            width = int(masked[i].sum())
            assert width <= bounds[i]
            if width:  # one contiguous span
                start = int(masked[i].float().argmax())
                assert masked[i, start : start + width].all()
            widest[n] = max(widest[n], width)
    assert widest == {400: 20, 200: 10, 100: 5, 40: 2, 19: 0}  # the bound is reached, not exceeded


def test_freq_mask_width_is_at_most_the_configured_width():
    augment = SpecAugment(freq_masks=1, freq_mask_width=10, time_masks=0).train()
    feats, feat_lengths = _padded_ones([30] * 500, 30, F=80)
    out = augment(feats, feat_lengths, generator=torch.Generator().manual_seed(0))
    zero = out == 0  # (B, T, F)
    assert torch.equal(zero.all(dim=1), zero.any(dim=1))  # a band is masked on every frame or none
    widths = zero[:, 0, :].sum(dim=1)  # (B,)
    assert int(widths.max()) == 10 and int(widths.min()) == 0
    assert set(widths.tolist()) == set(range(11))  # uniform in [0, 10]


def test_spec_augment_from_config_copies_every_field():
    config = AugmentConfig(freq_masks=3, freq_mask_width=5, time_masks=4, time_mask_max_ratio=0.1)
    augment = SpecAugment.from_config(config)
    assert (augment.freq_masks, augment.freq_mask_width) == (3, 5)
    assert (augment.time_masks, augment.time_mask_max_ratio) == (4, 0.1)


# ------------------------------------------------------------------------------------------
# Waveform augmentation


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.5])
def test_speed_perturb_scales_length_by_one_over_factor_and_pitch_by_factor(factor):
    wave = _sine(1000.0)
    faster = speed_perturb(wave, 16000, factor)
    assert abs(len(faster) - 16000 / factor) <= 1
    assert abs(_peak_hz(faster) - 1000.0 * factor) <= 2.0


def test_speed_perturb_by_one_returns_the_wave_unchanged():
    wave = torch.randn(1234)
    assert torch.equal(speed_perturb(wave, 16000, 1.0), wave)


@pytest.mark.parametrize("noise_len", [3000, 16000, 50000])
@pytest.mark.parametrize("snr_db", [0.0, 7.5, 20.0])
def test_add_noise_reaches_the_asked_snr(noise_len, snr_db):
    gen = torch.Generator().manual_seed(0)
    wave = _sine(300.0)
    noise = torch.randn(noise_len, generator=gen) * 3.0
    noisy = add_noise(wave, noise, snr_db, generator=gen)
    assert noisy.shape == wave.shape
    assert abs(_snr_db(wave, noisy) - snr_db) < 0.1


def test_add_noise_loops_short_noise_from_a_seeded_offset():
    wave = torch.ones(10)
    noise = torch.tensor([1.0, -1.0, 2.0])
    added = add_noise(wave, noise, 0.0, generator=torch.Generator().manual_seed(4)) - wave
    again = add_noise(wave, noise, 0.0, generator=torch.Generator().manual_seed(4)) - wave
    assert torch.equal(added, again)
    np.testing.assert_allclose(added[3:].numpy(), added[:-3].numpy(), atol=1e-6)  # period 3


def test_add_noise_with_silent_noise_leaves_the_wave_unchanged():
    wave = torch.randn(500)
    assert torch.equal(add_noise(wave, torch.zeros(100), 10.0), wave)
    assert torch.equal(add_noise(wave, torch.zeros(0), 10.0), wave)


def _noise_manifest(tmp_path):
    (tmp_path / "noise").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i, seconds in enumerate([0.5, 3.0]):
        samples = rng.normal(0, 0.1, int(16000 * seconds)).astype(np.float32)
        soundfile.write(tmp_path / f"noise/n{i}.wav", samples, 16000, subtype="FLOAT")
        lines.append(json.dumps({"audio": f"noise/n{i}.wav", "duration": seconds}))
    manifest = tmp_path / "noise.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_wave_augment_is_deterministic_for_a_seed(tmp_path):
    config = AugmentConfig(noise_prob=0.5, noise_manifest=str(_noise_manifest(tmp_path)))
    augment = WaveAugment(config)
    wave = _sine(440.0, seconds=1.0)
    outs = [[augment(wave, random.Random(seed)) for _ in range(2)] for seed in range(8)]
    for first, second in outs:
        assert torch.equal(first, second)
    lengths = {len(first) for first, _ in outs}
    noisy = [not torch.equal(first[: len(wave)], wave[: len(first)]) for first, _ in outs]
    assert len(lengths) > 1 and any(noisy)  # both the speed and the noise vary with the seed


def test_wave_augment_noise_is_added_at_an_snr_in_range(tmp_path):
    config = AugmentConfig(
        speed_factors=(1.0,),
        noise_prob=1.0,
        noise_snr_db=(5.0, 6.0),
        noise_manifest=str(_noise_manifest(tmp_path)),
    )
    augment = WaveAugment(config)
    wave = _sine(440.0, seconds=1.0)
    for seed in range(5):
        noisy = augment(wave, random.Random(seed))
        assert 5.0 - 0.01 < _snr_db(wave, noisy) < 6.0 + 0.01


def test_wave_augment_without_noise_only_changes_speed():
    augment = WaveAugment(AugmentConfig(speed_factors=(1.1,), noise_prob=0.0))
    wave = _sine(1000.0)
    out = augment(wave, random.Random(0))
    assert torch.equal(out, speed_perturb(wave, 16000, 1.1))


def test_bad_noise_manifest_names_the_file_and_line(tmp_path):
    manifest = tmp_path / "noise.jsonl"
    manifest.write_text('{"audio": "a.wav"}\nnot json\n')
    soundfile.write(tmp_path / "a.wav", np.zeros(100, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match=r"noise\.jsonl:2"):
        WaveAugment(AugmentConfig(noise_prob=1.0, noise_manifest=str(manifest)))
    with pytest.raises(ValueError, match="noise_manifest"):
        WaveAugment(AugmentConfig(noise_prob=1.0))

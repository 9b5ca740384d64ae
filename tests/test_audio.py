"""Tests for asr/audio.py: file loading in every format, resampling, down-mixing, segments,
errors that name the file, and the log-mel front end (frame counts, padding invariance,
normalization, global stats)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.audio import (
    AudioError,
    LogMelFeatures,
    audio_duration,
    compute_global_stats,
    find_audio_files,
    load_audio,
    load_audio_array,
)
from asr.config import FeatureConfig

torch.set_num_threads(1)
LIBRISPEECH_MINI = Path(__file__).resolve().parents[1].parent / "shared/data/librispeech-mini"


def _sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(
        np.float32
    )


def _peak_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave.double() * torch.hann_window(len(wave), dtype=torch.float64))
    return float(spectrum.abs().argmax()) * rate / len(wave)


# ------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize(
    "fmt, subtype, tolerance",
    [
        ("WAV", "PCM_U8", 1.0 / 128),
        ("WAV", "PCM_16", 1.0 / 2**15),
        ("WAV", "PCM_24", 1.0 / 2**23),
        ("WAV", "PCM_32", 1e-7),
        ("WAV", "FLOAT", 0.0),
        ("FLAC", "PCM_16", 1.0 / 2**15),
        ("FLAC", "PCM_24", 1.0 / 2**23),
        ("NIST", "PCM_16", 1.0 / 2**15),
    ],
)
def test_lossless_formats_round_trip_within_quantization(tmp_path, fmt, subtype, tolerance):
    samples = np.random.default_rng(0).uniform(-0.9, 0.9, 8000).astype(np.float32)
    path = tmp_path / f"x.{fmt.lower()}"
    soundfile.write(path, samples, 16000, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.shape == (8000,)
    assert np.abs(wave.numpy() - samples).max() <= tolerance + 1e-7


@pytest.mark.parametrize("fmt, subtype", [("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_lossy_formats_keep_energy_and_pitch(tmp_path, fmt, subtype):
    if fmt not in soundfile.available_formats():
        pytest.skip(f"this libsndfile ({soundfile.__libsndfile_version__}) cannot write {fmt}")
    samples = _sine(440.0, 16000, 1.0)
    path = tmp_path / f"x.{fmt.lower()}"
    soundfile.write(path, samples, 16000, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert abs(len(wave) - 16000) <= 1152  # at most one MP3 frame of encoder padding
    energy_ratio = float((wave**2).mean()) / float((samples**2).mean())
    assert 0.8 < energy_ratio < 1.2
    assert abs(_peak_hz(wave, 16000) - 440.0) <= 2.0


@pytest.mark.parametrize("rate", [8000, 44100, 192000])
def test_other_rates_come_out_at_16k_with_same_pitch(tmp_path, rate):
    path = tmp_path / f"sine_{rate}.wav"
    soundfile.write(path, _sine(1000.0, rate, 1.0), rate, subtype="FLOAT")
    wave = load_audio(path)
    assert abs(len(wave) - 16000) <= 1
    assert abs(_peak_hz(wave, 16000) - 1000.0) <= 1.0
    assert 0.45 < float(wave.abs().max()) < 0.55


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_is_downmixed_to_the_mean(tmp_path, channels):
    samples = np.random.default_rng(1).uniform(-0.5, 0.5, (4000, channels)).astype(np.float32)
    path = tmp_path / "multi.wav"
    soundfile.write(path, samples, 16000, subtype="FLOAT")
    wave = load_audio(path)
    np.testing.assert_allclose(wave.numpy(), samples.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_offset_and_duration_read_exactly_that_segment(tmp_path, suffix):
    samples = np.random.default_rng(2).uniform(-0.9, 0.9, 32000)
    samples = (np.round(samples * 2**15) / 2**15).astype(np.float32)  # exact in PCM_16
    path = tmp_path / f"ramp.{suffix}"
    soundfile.write(path, samples, 16000, subtype="PCM_16")
    segment = load_audio(path, offset=0.5, duration=0.25)
    np.testing.assert_array_equal(segment.numpy(), samples[8000:12000])
    tail = load_audio(path, offset=1.75)
    np.testing.assert_array_equal(tail.numpy(), samples[28000:])
    assert audio_duration(path) == pytest.approx(2.0)


def test_in_memory_arrays_match_file_loading(tmp_path):
    samples = np.random.default_rng(3).uniform(-0.5, 0.5, (8000, 2)).astype(np.float32)
    path = tmp_path / "s.wav"
    soundfile.write(path, samples, 8000, subtype="FLOAT")
    from_file = load_audio(path)
    torch.testing.assert_close(load_audio_array(samples, 8000), from_file)
    torch.testing.assert_close(load_audio_array(torch.from_numpy(samples), 8000), from_file)
    ints = np.array([0, 16384, -32768], dtype=np.int16)
    torch.testing.assert_close(load_audio_array(ints, 16000), torch.tensor([0.0, 0.5, -1.0]))


# ------------------------------------------------------------------------------------------
# Errors


def _wav_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.wav"
    soundfile.write(path, _sine(440.0, 16000, 0.1), 16000)
    return path.read_bytes()


def _make_bad(tmp_path: Path, case: str) -> tuple[Path, dict]:
    path = tmp_path / f"bad_{case}.wav"
    if case == "missing":
        pass
    elif case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_header":
        path.write_bytes(_wav_bytes(tmp_path)[:20])
    elif case == "not_audio":
        path.write_text("this is a transcript, not audio\n" * 20)
    elif case == "zero_samples":
        soundfile.write(path, np.zeros(0, dtype=np.float32), 16000)
    elif case in ("nan", "inf"):
        samples = _sine(440.0, 16000, 0.1)
        samples[100] = np.nan if case == "nan" else np.inf
        soundfile.write(path, samples, 16000, subtype="FLOAT")
    elif case == "offset_past_end":
        soundfile.write(path, _sine(440.0, 16000, 1.0), 16000)
        return path, {"offset": 1.5}
    return path, {}


ERROR_CASES = [
    ("missing", "no such file"),
    ("directory", "directory"),
    ("empty", "empty"),
    ("truncated_header", "not a readable audio file"),
    ("not_audio", "not a readable audio file"),
    ("zero_samples", "no samples"),
    ("nan", "NaN or infinite"),
    ("inf", "NaN or infinite"),
    ("offset_past_end", "past the end"),
]


@pytest.mark.parametrize("case, reason", ERROR_CASES)
def test_bad_audio_raises_one_line_audio_error_naming_the_file(tmp_path, case, reason):
    path, kwargs = _make_bad(tmp_path, case)
    with pytest.raises(AudioError) as info:
        load_audio(path, **kwargs)
    message = str(info.value)
    assert path.name in message and reason in message and "\n" not in message


def test_bad_arrays_raise_audio_error_with_their_name():
    with pytest.raises(AudioError, match=r"utt-7.*NaN"):
        load_audio_array(np.array([0.0, np.nan], dtype=np.float32), 16000, name="utt-7")
    with pytest.raises(AudioError, match=r"utt-8.*no samples"):
        load_audio_array(np.zeros(0, dtype=np.float32), 16000, name="utt-8")


def test_audio_duration_and_discovery_errors_name_the_path(tmp_path):
    with pytest.raises(AudioError, match=r"nothing\.wav"):
        audio_duration(tmp_path / "nothing.wav")
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(AudioError, match=re.escape(str(tmp_path))):
        find_audio_files(tmp_path)


def test_find_audio_files_walks_folders_by_extension(tmp_path):
    for name in ["b/2.flac", "a/1.WAV", "c.mp3", "d.txt", "e/f.sph"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = find_audio_files(tmp_path)
    assert found == sorted(tmp_path / name for name in ["a/1.WAV", "b/2.flac", "c.mp3", "e/f.sph"])
    assert find_audio_files(tmp_path / "d.txt") == [tmp_path / "d.txt"]


def test_real_librispeech_flac_loads():
    if not LIBRISPEECH_MINI.is_dir():
        pytest.skip(f"shared LibriSpeech sample not found at {LIBRISPEECH_MINI}")
    path = next(iter(sorted(LIBRISPEECH_MINI.rglob("*.flac"))))
    wave = load_audio(path)
    assert len(wave) == round(audio_duration(path) * 16000)
    assert 1.0 < len(wave) / 16000 < 40.0
    assert float(wave.abs().max()) <= 1.0 and 0.005 < float(wave.pow(2).mean().sqrt()) < 0.5
    feats, feat_lengths = LogMelFeatures(FeatureConfig())(wave[None], torch.tensor([len(wave)]))
    assert feat_lengths.tolist() == [feats.shape[1]]
    assert feats.shape == (1, 1 + (len(wave) - 400) // 160, 80) and torch.isfinite(feats).all()


# ------------------------------------------------------------------------------------------
# Features


def test_frame_count_formula_over_a_grid_of_lengths():
    features = LogMelFeatures(FeatureConfig())
    lengths = [0, 1, 399, 400, 401, 559, 560, 561, 1000, 16000, 16001]
    expected = [0, 0, 0, 1, 1, 1, 2, 2, 4, 98, 98]
    assert [features.num_frames(n) for n in lengths] == expected
    assert features.num_frames(torch.tensor(lengths)).tolist() == expected
    waves = torch.randn(len(lengths), max(lengths)) * 0.1
    feats, feat_lengths = features(waves, torch.tensor(lengths))
    assert feats.shape == (len(lengths), 98, 80) and feat_lengths.tolist() == expected


def test_inputs_shorter_than_a_window_give_zero_frames():
    features = LogMelFeatures(FeatureConfig())
    feats, feat_lengths = features(torch.randn(2, 300), torch.tensor([300, 100]))
    assert feats.shape == (2, 0, 80) and feat_lengths.tolist() == [0, 0]


KALDI = FeatureConfig(framing="kaldi", preemphasis=0.97, mel_scale="slaney", log_guard="clamp")
FRAMINGS = {"start": FeatureConfig(), "center": FeatureConfig(center=True), "kaldi": KALDI}


def test_kaldi_frame_count_is_kaldis_snip_edges_false_count():
    features = LogMelFeatures(KALDI)
    lengths = [0, 1, 79, 80, 239, 240, 241, 400, 16000, 16079, 16080]
    expected = [0, 0, 0, 1, 1, 2, 2, 3, 100, 100, 101]  # (N + hop/2) // hop: frames centred < N
    assert [features.num_frames(n) for n in lengths] == expected
    assert features.num_frames(torch.tensor(lengths)).tolist() == expected
    waves = torch.randn(len(lengths), max(lengths)) * 0.1
    feats, feat_lengths = features(waves, torch.tensor(lengths))
    assert feats.shape == (len(lengths), 101, 80) and feat_lengths.tolist() == expected


def kaldi_reference(wave: torch.Tensor, t: int, config: FeatureConfig) -> torch.Tensor:
    """Frame t of Kaldi's snip_edges=false framing as kaldi-native-fbank's ExtractWindow writes
    it, one sample at a time, in float64: log-mel (F,)."""
    win, hop, n, a = 400, 160, len(wave), config.preemphasis
    frame = []
    for i in range(win):
        s = t * hop + hop // 2 - win // 2 + i
        while s < 0 or s >= n:  # reflect, as often as it takes
            s = -s - 1 if s < 0 else 2 * n - 1 - s
        frame.append(float(wave[s]))
    x = torch.tensor(frame, dtype=torch.float64)
    x = torch.cat([x[:1] * (1 - a), x[1:] - a * x[:-1]])
    power = torch.fft.rfft(x * torch.hann_window(win, dtype=torch.float64), n=512).abs() ** 2
    fb = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 80, 16000, "slaney", "slaney")
    return torch.log((power @ fb.double()).clamp(min=config.log_offset))


@pytest.mark.parametrize("n", [3000, 1000, 239, 100, 80])
def test_kaldi_frames_are_kaldis_mirrored_frames_with_per_frame_preemphasis(n):
    config = dataclasses.replace(KALDI, normalize="none", log_offset=1e-7)
    wave = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1
    feats, _ = LogMelFeatures(config)(wave[None], torch.tensor([n]))
    assert feats.shape == (1, (n + 80) // 160, 80)
    T = feats.shape[1]
    for t in sorted({0, 1, T // 2, T - 2, T - 1} & set(range(T))):  # both mirrored ends
        torch.testing.assert_close(feats[0, t].double(), kaldi_reference(wave, t, config),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip


def test_log_guard_clamp_is_log_of_power_floored_at_the_offset():
    wave = torch.randn(1, 4000, generator=torch.Generator().manual_seed(1)) * 0.1
    wave[0, 2000:] = 0.0  # digital silence: power 0
    add, clamp = (
        LogMelFeatures(FeatureConfig(normalize="none", log_offset=1e-4, log_guard=guard))(
            wave, torch.tensor([4000])
        )[0][0]
        for guard in ("add", "clamp")
    )
    power = add.exp() - 1e-4  # (T, F)
    torch.testing.assert_close(clamp, power.clamp(min=1e-4).log(), atol=1e-3, rtol=1e-4)
    silent = clamp[-5:]  # frames wholly in the silence: exactly the floor
    assert torch.equal(silent, torch.full_like(silent, torch.tensor(1e-4).log().item()))
    assert (add[-5:] - silent).abs().max() < 1e-3  # log(0 + offset) == log(max(0, offset))


@pytest.mark.parametrize(
    "overrides, culprit",
    [
        ({"framing": "kaldi", "center": True}, "features.framing=kaldi"),
        ({"framing": "htk"}, "features.framing"),
        ({"log_guard": "max"}, "features.log_guard"),
    ],
)
def test_front_end_options_are_checked_in_one_line(overrides, culprit):
    with pytest.raises(ValueError, match=re.escape(culprit)) as caught:
        FeatureConfig(**overrides)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest.mark.parametrize("normalize", ["utterance", "none", "global", "running"])
def test_padding_does_not_change_features(normalize, framing):
    features = LogMelFeatures(dataclasses.replace(FRAMINGS[framing], normalize=normalize))
    features.set_global_stats(torch.linspace(-5, 5, 80), torch.linspace(1, 3, 80))
    lengths = [4000, 2500, 999]
    waves = torch.zeros(3, 4000)
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.randn(n, generator=torch.Generator().manual_seed(i)) * 0.1
    waves[1, 2500:] = 0.7  # garbage in the padding must not leak in either
    feats, feat_lengths = features(waves, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone, alone_lengths = features(waves[i : i + 1, :n], torch.tensor([n]))
        t = int(alone_lengths[0])
        assert t == int(feat_lengths[i])
        torch.testing.assert_close(feats[i, :t], alone[0], atol=1e-5, rtol=1e-5)
        assert (feats[i, t:] == 0).all()


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 2000), min_size=1, max_size=4),
    garbage=st.floats(-1.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_any_padded_batch_gives_each_item_its_kaldi_features_alone(lengths, garbage, seed):
    features = LogMelFeatures(dataclasses.replace(KALDI, normalize="none"))
    g = torch.Generator().manual_seed(seed)
    waves = torch.full((len(lengths), max(lengths) + 7), garbage)  # padding must not leak in
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.randn(n, generator=g) * 0.1
    feats, feat_lengths = features(waves, torch.tensor(lengths))
    assert feat_lengths.tolist() == [(n + 80) // 160 for n in lengths]
    for i, n in enumerate(lengths):
        alone, _ = features(waves[i : i + 1, :n], torch.tensor([n]))
        t = int(feat_lengths[i])
        torch.testing.assert_close(feats[i, :t], alone[0], atol=1e-4, rtol=1e-4)
        assert (feats[i, t:] == 0).all()


def test_utterance_normalization_gives_zero_mean_unit_std_on_valid_frames():
    features = LogMelFeatures(FeatureConfig(normalize="utterance"))
    waves = torch.randn(2, 8000) * torch.linspace(0.01, 1.0, 8000)
    feats, feat_lengths = features(waves, torch.tensor([8000, 5000]))
    for i in range(2):
        valid = feats[i, : feat_lengths[i]]
        assert valid.mean(dim=0).abs().max() < 1e-4
        assert (valid.std(dim=0, unbiased=False) - 1.0).abs().max() < 1e-3


def _raw_batches():
    features = LogMelFeatures(FeatureConfig(normalize="none"))
    gen = torch.Generator().manual_seed(5)
    batch1 = features(torch.randn(2, 6000, generator=gen), torch.tensor([6000, 3000]))
    batch2 = features(torch.randn(3, 4000, generator=gen) * 0.3, torch.tensor([4000, 500, 2000]))
    return batch1, batch2


def test_global_stats_of_batches_equal_stats_of_their_concatenation():
    batch1, batch2 = _raw_batches()
    mean, std = compute_global_stats([batch1, batch2])
    frames = torch.cat([f[i, :n] for f, lens in (batch1, batch2) for i, n in enumerate(lens)])
    assert frames.shape[0] == int(batch1[1].sum() + batch2[1].sum())
    torch.testing.assert_close(mean, frames.double().mean(0).float())
    torch.testing.assert_close(std, frames.double().std(0, unbiased=False).float())


def test_global_normalization_uses_the_stats_and_saves_them_in_the_state_dict():
    batch1, batch2 = _raw_batches()
    mean, std = compute_global_stats([batch1, batch2])
    features = LogMelFeatures(FeatureConfig(normalize="global"))
    features.set_global_stats(mean, std)
    restored = LogMelFeatures(FeatureConfig(normalize="global"))
    restored.load_state_dict(features.state_dict())
    torch.testing.assert_close(restored.global_mean, mean)
    torch.testing.assert_close(restored.global_std, std)
    wave = torch.randn(1, 6000, generator=torch.Generator().manual_seed(5))
    raw, _ = LogMelFeatures(FeatureConfig(normalize="none"))(wave, torch.tensor([6000]))
    normalized, _ = restored(wave, torch.tensor([6000]))
    torch.testing.assert_close(normalized, (raw - mean) / std)
    with pytest.raises(ValueError, match="shape"):
        features.set_global_stats(torch.zeros(40), torch.ones(40))

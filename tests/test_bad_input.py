"""Bad input, case by case: each gives one clear message naming the culprit, or is handled.

Audio: missing, empty, truncated (WAV, FLAC), corrupt header, not audio, zero samples, NaN, inf
-> one-line `AudioError` naming the file; shorter than one feature frame -> an empty transcript
and, in training, skipped by the filter; 8 kHz, 192 kHz and 8 channels -> mono 16 kHz; hours
long -> read a segment at a time. Manifests, configs (through `asr train`) and text follow.
Every command's bad inputs, each one line and status 2: tests/test_cli_errors.py.
"""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from asr.audio import AudioError, LogMelFeatures, audio_duration, load_audio
from asr.checkpoint import save_bundle
from asr.cli import main
from asr.config import EncoderConfig, FeatureConfig, load_config
from asr.data.dataset import AudioDataset
from asr.data.manifest import Utterance, filter_utterances
from asr.inference.transcribe import AudioSegment, load_model
from asr.model import CtcModel
from asr.resampling import MAX_RESAMPLE_TAPS, resampling_ratio
from asr.tokenizer import CharTokenizer
from asr.training.datamodule import AsrDataModule

REPO = Path(__file__).resolve().parents[1]
SR = 16000
LETTERS = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)).astype(
        np.float32
    )


def peak_hz(wave: torch.Tensor, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy() * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def frames_for_duration(seconds: float) -> int:
    """The xs model's output frames: 10 ms feature frames, subsampled 4 times."""
    return max(0, LogMelFeatures(FeatureConfig()).num_frames(int(seconds * SR)) // 4)


# --------------------------------------------------------------------------------------------
# Audio files

AUDIO_ERRORS = {  # case -> what the one-line message says
    "missing": "no such file",
    "empty": "file is empty",
    "truncated_wav": "truncated: its header promises 1.000 s of audio but the file holds 0.500 s",
    "truncated_flac": "decoding failed: truncated or corrupt",
    "corrupt_header": "not a readable audio file",
    "not_audio": "not a readable audio file",
    "zero_samples": "contains no samples",
    "nan_samples": "contains NaN or infinite samples",
    "inf_samples": "contains NaN or infinite samples",
    "absurd_rate": "sample rate 100 Hz is outside [1000, 1000000] Hz",
}


def make_bad_audio(folder: Path, case: str) -> Path:
    path = folder / f"{case}.{'flac' if case == 'truncated_flac' else 'wav'}"
    samples = tone(440.0, SR, 1.0)
    if case in ("truncated_wav", "corrupt_header"):
        soundfile.write(path, samples, SR, subtype="PCM_16")
        data = path.read_bytes()
        header = len(data) - 2 * len(samples)
        if case == "truncated_wav":  # the download stopped halfway through the samples
            path.write_bytes(data[: header + len(samples)])
        else:  # the "fmt " chunk overwritten
            path.write_bytes(data[:12] + bytes(range(28)) + data[40:])
    elif case == "truncated_flac":
        soundfile.write(path, samples, SR)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "not_audio":
        path.write_text("hello world, this is a transcript\n" * 50)
    elif case == "zero_samples":
        soundfile.write(path, np.zeros(0, np.float32), SR)
    elif case == "absurd_rate":  # a damaged header, or not meant as sound
        soundfile.write(path, samples, 100)
    elif case in ("nan_samples", "inf_samples"):
        samples[1234] = np.nan if case == "nan_samples" else -np.inf
        soundfile.write(path, samples, SR, subtype="FLOAT")
    return path


@pytest.mark.parametrize("case", AUDIO_ERRORS)
def test_bad_audio_file_gives_one_audio_error_naming_it(tmp_path: Path, case: str) -> None:
    path = make_bad_audio(tmp_path, case)
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert isinstance(caught.value, ValueError)  # a user error, caught by the CLI
    assert str(caught.value) == f"cannot read audio file '{path}': {AUDIO_ERRORS[case]}" or (
        str(caught.value).startswith(f"cannot read audio file '{path}': {AUDIO_ERRORS[case]} (")
    )
    assert "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    model = CtcModel(EncoderConfig.preset("xs", num_layers=1), LETTERS.vocab_size)
    save_bundle(path, model, LogMelFeatures(FeatureConfig()), LETTERS)
    return path


def test_transcribe_cli_reports_each_bad_file_once_and_transcribes_the_rest(
    tmp_path: Path, model_path: Path, capsys
) -> None:
    bad = [make_bad_audio(tmp_path, case) for case in AUDIO_ERRORS]
    good, short = tmp_path / "good.wav", tmp_path / "short.wav"
    soundfile.write(good, tone(440.0, SR, 1.0), SR)
    soundfile.write(short, tone(440.0, SR, 100 / SR), SR)
    status = main(["transcribe", "--model", str(model_path), *map(str, [good, *bad, short])])
    out, err = capsys.readouterr()
    assert status == 1
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(good), str(short)]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == len(bad)
    for path, case, line in zip(bad, AUDIO_ERRORS, errors):
        assert str(path) in line and AUDIO_ERRORS[case] in line, line
    assert f"asr transcribe: 2 of {len(bad) + 2} inputs" in err


def test_audio_shorter_than_one_feature_frame_is_an_empty_transcript_and_skipped_in_training(
    tmp_path: Path, model_path: Path
) -> None:
    """Decided: not an error. It has no speech to find, so transcription returns no words, and
    a transcript cannot be learnt from it, so training drops it with the other unusable ones."""
    short = tmp_path / "short.wav"
    soundfile.write(short, tone(440.0, SR, 100 / SR), SR)  # 100 samples < one 400-sample window
    assert len(load_audio(short)) == 100
    transcriber = load_model(model_path)
    from_file, from_array = transcriber.transcribe([short, (tone(440.0, SR, 100 / SR), SR)])
    for result in (from_file, from_array):
        assert result.error is None and result.text == "" and result.words == []
        assert result.duration == pytest.approx(100 / SR)
    utt = Utterance("short", str(short), "a", 100 / SR)
    for min_duration, reason in [
        (0.1, "shorter than min_duration=0.1s"),
        (0.0, "audio too short for its transcript under CTC"),
    ]:
        kept, skipped = filter_utterances([utt], LETTERS, frames_for_duration, min_duration, 30.0)
        assert kept == [] and skipped == {reason: ["short"]}


def test_audio_shorter_than_its_manifest_duration_is_skipped_with_a_warning(
    tmp_path: Path, caplog
) -> None:
    path = tmp_path / "cut.wav"
    soundfile.write(path, tone(440.0, SR, 0.5), SR)  # the manifest below says 2 s
    dataset = AudioDataset(
        [Utterance("cut", str(path), "a", 2.0), Utterance("fine", str(path), "a", 0.5)], LETTERS
    )
    with caplog.at_level(logging.WARNING, logger="asr.data.manifest"):
        assert dataset[0] is None and dataset[1] is not None
    assert dataset.num_failed == 1
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"skipping utterance 'cut': '{path}' ends 0.500 s after offset 0 s")
    assert "manifest says 2 s" in message


@pytest.mark.parametrize("rate", [8000, 192000, 4001, 44101])
def test_extreme_sample_rates_are_resampled_to_16k(tmp_path: Path, rate: int) -> None:
    """4001 and 44101 Hz share no factor with 16 kHz: the exact resampling kernel would take
    1.5 GB and 16 GB; the approximated ratio keeps it under 32 MB and the pitch in place."""
    orig, new = resampling_ratio(rate, SR)
    assert orig * new <= MAX_RESAMPLE_TAPS and abs(new / orig * rate / SR - 1) < 1e-5
    path = tmp_path / f"tone{rate}.wav"
    soundfile.write(path, tone(1000.0, rate, 1.0), rate, subtype="PCM_16")
    wave = load_audio(path)
    assert wave.shape == (SR,) and wave.dtype == torch.float32
    assert peak_hz(wave) == pytest.approx(1000.0, abs=1.0)
    middle = wave[1000:-1000].numpy()  # away from the resampler's edges
    assert np.sqrt(2 * np.mean(middle**2)) == pytest.approx(0.5, rel=0.01)


def test_many_channels_are_averaged_to_mono(tmp_path: Path) -> None:
    gains = np.linspace(-0.2, 1.0, 8, dtype=np.float32)
    mono = tone(300.0, 48000, 0.5, amplitude=1.0)
    path = tmp_path / "eight.wav"
    soundfile.write(path, mono[:, None] * gains[None, :], 48000, subtype="FLOAT")  # (N, 8)
    assert soundfile.info(path).channels == 8
    expected = load_audio(tmp_path / "eight.wav", sample_rate=48000)
    np.testing.assert_allclose(expected.numpy(), mono * gains.mean(), atol=1e-6)
    wave = load_audio(path)
    assert wave.shape == (8000,) and peak_hz(wave) == pytest.approx(300.0, abs=2.0)


def test_an_hour_long_file_is_read_one_segment_at_a_time(tmp_path: Path, model_path: Path):
    path = tmp_path / "hour.wav"
    with soundfile.SoundFile(path, "w", 8000, 1, "PCM_16") as f:  # 57.6 MB, no hour in memory
        silence = np.zeros(8000 * 60, np.int16)
        for _ in range(59):
            f.write(silence)
        f.write(silence[: 8000 * 58])
        f.write((tone(1000.0, 8000, 2.0) * 32767).astype(np.int16))  # the last 2 s: a tone
    try:
        assert audio_duration(path) == 3600.0
        tracemalloc.start()
        wave = load_audio(path, offset=3599.0, duration=1.0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert wave.shape == (SR,) and peak_hz(wave) == pytest.approx(1000.0, abs=1.0)
        assert peak < 2_000_000, f"reading 1 s of an hour took {peak} bytes"
        (result,) = load_model(model_path).transcribe(AudioSegment(path, offset=3598.0))
        assert result.error is None and result.duration == pytest.approx(2.0)
        utt = Utterance("hour", str(path), "a", 3600.0)
        kept, skipped = filter_utterances([utt], LETTERS, frames_for_duration, 0.1, 30.0)
        assert kept == [] and skipped == {"longer than max_duration=30.0s": ["hour"]}
    finally:
        path.unlink()


# --------------------------------------------------------------------------------------------
# Manifests


def test_bad_manifest_lines_are_reported_by_line_and_the_valid_ones_train(
    tmp_path: Path, caplog
) -> None:
    for name in ("a", "b", "c"):
        soundfile.write(tmp_path / f"{name}.wav", tone(440.0, SR, 1.0), SR)
    lines = [
        '{"id": "a", "audio": "a.wav", "text": "one", "duration": 1.0}',
        '{"id": "x1", "audio": "a.wav", "text": "one", "duration": 1.0',  # 2
        '{"id": "x2", "audio": "a.wav", "duration": 1.0}',  # 3
        '{"id": "x3", "audio": "a.wav", "text": "one", "duration": -2.5}',  # 4
        '{"id": "x4", "audio": "a.wav", "text": "one", "duration": 1e9}',  # 5
        '{"id": "b", "audio": "b.wav", "text": "two", "duration": 1.0}',
        '{"id": "a", "audio": "c.wav", "text": "three", "duration": 1.0}',  # 7
        '{"id": "ghost", "audio": "nowhere/ghost.wav", "text": "four", "duration": 1.0}',
        '{"id": "x5", "audio": "a.wav", "text": "caf\xe9", "duration": 1.0}',  # 9: Latin-1
        '{"id": "c", "audio": "c.wav", "text": "five", "duration": 1.0}',
    ]
    manifest = tmp_path / "train.jsonl"
    # Saved by a Windows editor: a byte-order mark first; one line in Latin-1, not UTF-8.
    encoded = [line.encode("latin-1" if "x5" in line else "utf-8") for line in lines]
    manifest.write_bytes("\ufeff".encode() + b"\r\n".join(encoded) + b"\r\n")
    config = load_config(REPO / "configs/tiny.yaml", [f"data.train_manifest={manifest}"])
    datamodule = AsrDataModule(config, LETTERS, frames_for_duration)
    with caplog.at_level(logging.WARNING, logger="asr.data.manifest"):
        datamodule.setup("fit")
    assert [u.id for u in datamodule.train_set.utterances] == ["a", "b", "c"]
    report = caplog.text
    for line_no, reason in [
        (2, "invalid JSON"),
        (3, "missing field 'text'"),
        (4, "'duration' must be in (0, 86400] seconds, got -2.5"),
        (5, "'duration' must be in (0, 86400] seconds, got 1000000000.0"),
        (7, "duplicate id 'a' (first on line 1), dropped"),
        (9, "not UTF-8 text (byte 0xe9 at column 44)"),
    ]:
        assert f"{manifest}:{line_no}: {reason}" in report
    assert "kept 3 of 4 utterances" in report and "missing audio file: 1 (e.g. ghost)" in report


# --------------------------------------------------------------------------------------------
# Configs: through `asr train`, before any work starts

CONFIG_ERRORS = [  # (YAML text, message after "asr: error: ")
    ("optim:\n  weight_decy: 0.1\n", "unknown config key 'optim.weight_decy'; did you mean"),
    ("trainer:\n  max_steps: many\n", "config key 'trainer.max_steps' expects int, got 'many'"),
    ("data:\n  max_duration: [30]\n", "config key 'data.max_duration' expects float, got [30]"),
    ("encoder:\n  num_heads: 5\n", "encoder.d_model=64 is not divisible by encoder.num_heads=5"),
    ("encoder:\n  conv_kernel_size: 16\n", "encoder.conv_kernel_size must be a positive odd"),
    ("optim:\n  lr: -0.001\n", "optim.lr must be positive, got -0.001"),
    ("data:\n  min_duration: 40\n", "data.min_duration=40.0 must be below data.max_duration"),
    ("features:\n  win_ms: 50\n", "features.win_ms=50.0 and features.hop_ms=10.0 give windows"),
    ("augment:\n  speed_factors: []\n", "augment.speed_factors must be positive numbers, got []"),
    ("trainer:\n  max_steps: 0\n", "trainer.max_steps must be positive, got 0"),
    ("- just\n- a list\n", "config file {config} must hold a mapping at the top level"),
]


@pytest.mark.parametrize("text, message", CONFIG_ERRORS)
def test_bad_config_fails_with_one_line_before_any_work(
    tmp_path, capsys, monkeypatch, text, message
):
    monkeypatch.chdir(tmp_path)  # the default exp_dir, exp/run, would be made here
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("")
    argv = ["train", "--config", str(config), f"data.train_manifest={manifest}"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"asr: error: {message.format(config=config)}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "train.jsonl"]


# --------------------------------------------------------------------------------------------
# Text


def test_characters_outside_the_tokenizer_are_reported_with_their_utterances(
    tmp_path: Path, caplog
) -> None:
    path = tmp_path / "a.wav"
    soundfile.write(path, tone(440.0, SR, 2.0), SR)
    utts = [
        Utterance("fine", str(path), "Hello there", 2.0),
        Utterance("cafe", str(path), "Un café, s'il vous plaît", 2.0),
        Utterance("route", str(path), "Route 66", 2.0),
        Utterance("creme", str(path), "crème brûlée", 2.0),
    ]
    with caplog.at_level(logging.WARNING, logger="asr.data.manifest"):
        kept, skipped = filter_utterances(utts, LETTERS, frames_for_duration, 0.1, 30.0)
    assert [u.id for u in kept] == ["fine"]
    assert skipped == {"text has characters unknown to the tokenizer": ["cafe", "route", "creme"]}
    report = caplog.text
    for char, count, ids in [("è", 1, "creme"), ("é", 2, "cafe, creme"), ("6", 1, "route")]:
        assert f"unknown character {char!r} (U+{ord(char):04X}) in {count} (e.g. {ids})" in report
    assert "'î'" in report and "'û'" in report
    # Used without the filter, the dataset names the utterance and the characters, not a KeyError.
    with pytest.raises(ValueError, match=r"utterance 'route': .*characters \['6'\] in 'Route 66'"):
        AudioDataset(utts, LETTERS)[2]

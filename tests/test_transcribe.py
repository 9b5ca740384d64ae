"""Tests for asr/transcribe.py: batch invariance, inputs of every kind, chunking and stitching,
output formats, and `asr transcribe` on good and bad files and bad model files."""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pytest
import soundfile
import torch

import asr
import asr.inference.engine as engine_module
from asr.audio import LogMelFeatures
from asr.checkpoint import BundleError, save_bundle
from asr.cli import main
from asr.cli.transcribe import add_transcribe_arguments, transcribe_command
from asr.config import EncoderConfig, FeatureConfig
from asr.inference.alignment import Word
from asr.inference.engine import AudioSegment, plan_chunks, stitch_chunks
from asr.inference.formats import format_result, subtitle_cues
from asr.inference.lm import NgramLM
from asr.model import CtcModel
from asr.tokenizer import CharTokenizer

RATE = 16000
LENGTHS = {"a": 1.3, "b": 2.7, "c": 0.9, "d": 3.6, "e": 2.0}


def signal(seconds: float, seed: int) -> np.ndarray:
    """Noise under a random envelope that changes every 0.1 s: frames that differ."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    envelope = np.repeat(rng.uniform(0, 1, n // 1600 + 1), 1600)[:n]
    return (0.3 * envelope * rng.standard_normal(n)).astype(np.float32)


def make_bundle(path, local: bool = False) -> str:
    """An xs model with random weights whose head is calibrated to emit varied, peaky tokens.

    local=True: attention and convolution modules output zero and features are not normalized,
    so each output frame depends only on the audio under its subsampling window.
    """
    torch.manual_seed(0)
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    model = CtcModel(EncoderConfig.preset("xs"), tokenizer.vocab_size).eval()
    frontend = LogMelFeatures(FeatureConfig(normalize="none" if local else "utterance"))
    with torch.no_grad():
        if local:
            for block in model.encoder.blocks:
                for linear in (block.mhsa.attention.out, block.conv.pointwise_out):
                    linear.weight.zero_()
                    linear.bias.zero_()
        wave = torch.from_numpy(signal(3.0, 1234))[None]  # (1, N)
        x, _ = model.encoder(*frontend(wave, torch.tensor([wave.shape[1]])))  # (1, T', D)
        model.head.weight.div_(x[0].std(0)).mul_(5.0)
        model.head.bias.copy_(-model.head.weight @ x[0].mean(0))
        model.head.bias[1] += 5.0  # the space: words of a few letters
    save_bundle(path, model, frontend, tokenizer)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    paths = []
    for seed, (name, seconds) in enumerate(LENGTHS.items()):
        paths.append(folder / f"{name}.{'flac' if seed % 2 else 'wav'}")
        soundfile.write(paths[-1], signal(seconds, seed), RATE)
    return paths


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def transcriber(model_path):
    return asr.load_model(model_path)


def timed(result) -> list[tuple[str, float, float]]:
    return [(w.word, round(w.start, 6), round(w.end, 6)) for w in result.words]


def test_results_do_not_depend_on_batch_size(transcriber, files):
    alone = [transcriber.transcribe(path)[0] for path in files]
    assert all(len(r.words) >= 3 for r in alone)
    for batch_seconds in (0.5, 4.0, 1000.0):
        batched = transcriber.transcribe(files, batch_seconds=batch_seconds)
        assert [r.path for r in batched] == [str(p) for p in files]
        assert [r.text for r in batched] == [r.text for r in alone]
        assert [timed(r) for r in batched] == [timed(r) for r in alone]
        for r, ref, path in zip(batched, alone, files):
            assert r.duration == pytest.approx(LENGTHS[path.stem])
            confidences = [w.confidence for w in r.words]
            assert confidences == pytest.approx([w.confidence for w in ref.words], abs=1e-5)


def test_array_segment_and_path_inputs_agree(transcriber, files):
    path = files[3]
    samples, rate = soundfile.read(path, dtype="int16")
    by_path, by_array, by_segment = transcriber.transcribe(
        [path, (samples, rate), AudioSegment(path, id="seg")]
    )
    assert by_array.text == by_path.text == by_segment.text != ""
    assert (by_array.id, by_segment.id, by_array.path) == ("array1", "seg", None)
    assert by_path.duration == pytest.approx(LENGTHS["d"])
    [part] = transcriber.transcribe(AudioSegment(path, offset=0.5, duration=1.5))
    [same] = transcriber.transcribe((samples[8000:32000], rate))
    assert part.duration == pytest.approx(1.5)
    assert timed(part) == timed(same) and part.text != ""


def test_chunked_transcription_equals_whole_file_for_a_local_model(tmp_path):
    local = asr.load_model(make_bundle(tmp_path / "local.pt", local=True))
    path = tmp_path / "long.wav"
    soundfile.write(path, signal(10.0, 7), RATE)
    [whole] = local.transcribe(path, chunk_seconds=60.0)
    [chunked] = local.transcribe(path, chunk_seconds=4.0, chunk_overlap=2.0)
    assert len(whole.words) >= 15
    assert chunked.text == whole.text
    assert timed(chunked) == timed(whole)


def test_chunk_reader_never_reads_more_than_chunk_seconds(transcriber, tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    soundfile.write(path, signal(10.0, 3), RATE)
    requests = []
    real_load_audio = engine_module.load_audio

    def recording_load_audio(path, sample_rate, offset, duration):
        requests.append((offset, duration))
        return real_load_audio(path, sample_rate, offset, duration)

    monkeypatch.setattr(engine_module, "load_audio", recording_load_audio)
    [result] = transcriber.transcribe(path, chunk_seconds=3.0, chunk_overlap=1.0)
    assert result.error is None and result.words
    assert max(d for _, d in requests) <= 3.0
    assert sorted(requests) == [(0.0, 3.0), (2.0, 3.0), (4.0, 3.0), (6.0, 3.0), (7.0, 3.0)]
    assert all(0.0 <= w.start < w.end <= 10.0 for w in result.words)
    assert [w.start for w in result.words] == sorted(w.start for w in result.words)


def test_plan_chunks_covers_the_input_with_the_overlap():
    for duration in (0.5, 4.0, 4.01, 9.3, 61.0, 3600.0):
        chunks = plan_chunks(duration, 4.0, 1.0)
        assert chunks[0][0] == 0.0
        assert chunks[-1][0] + chunks[-1][1] == pytest.approx(duration)
        assert all(length == min(4.0, duration) for _, length in chunks)
        for (s0, l0), (s1, _) in itertools.pairwise(chunks):
            assert s0 < s1 and s0 + l0 - s1 >= 1.0 - 1e-9
    assert len(plan_chunks(3600.0, 30.0, 4.0)) == math.ceil((3600 - 30) / 26) + 1


def w(word: str, start: float, end: float) -> Word:
    return Word(word, start, end, 1.0)


def test_stitch_keeps_each_word_of_the_overlap_once():
    first = (
        0.0,
        10.0,
        [w("one", 1, 2), w("two", 6.5, 7.2), w("three", 8.4, 9.0), w("fo", 9.6, 10)],
    )
    second = (6.0, 16.0, [w("wo", 6.0, 6.3), w("two", 6.6, 7.2), w("three", 8.3, 9.0),
                          w("four", 9.6, 10.4), w("five", 13, 14)])  # fmt: skip
    words = stitch_chunks([second, first])
    assert [x.word for x in words] == ["one", "two", "three", "four", "five"]


def test_stitch_moves_the_cut_out_of_a_word_both_chunks_saw():
    # "border" straddles the overlap midpoint 8.0 with its centre on opposite sides in the two
    # chunks: the plain midpoint rule would drop it; the cut moves to the gap at 8.5.
    first = (0.0, 10.0, [w("a", 7.0, 7.4), w("border", 7.6, 8.3), w("b", 8.5, 9.0)])
    second = (6.0, 16.0, [w("a", 7.0, 7.4), w("border", 7.8, 8.5), w("b", 8.5, 9.0)])
    assert [x.word for x in stitch_chunks([first, second])] == ["a", "border", "b"]
    swapped = [(0.0, 10.0, second[2]), (6.0, 16.0, first[2])]  # would keep it twice
    assert [x.word for x in stitch_chunks(swapped)] == ["a", "border", "b"]


def test_subtitle_cues_respect_duration_length_and_pauses():
    words = [w(f"word{i}", i * 0.6, i * 0.6 + 0.5) for i in range(20)] + [w("late", 20.0, 20.4)]
    cues = subtitle_cues(words)
    assert [x for cue in cues for x in cue] == words
    for cue in cues:
        assert cue[-1].end - cue[0].start <= 7.0
        assert len(" ".join(x.word for x in cue)) <= 42
    assert cues[-1] == [words[-1]]  # after a pause of more than 1 s
    result = engine_module.Result("x", "x.wav", "a b", [w("a", 0.5, 1.0), w("b", 3661.0, 3661.25)])
    assert format_result(result, "srt") == (
        "1\n00:00:00,500 --> 00:00:01,000\na\n\n2\n01:01:01,000 --> 01:01:01,250\nb\n"
    )
    assert format_result(result, "vtt").startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.000\na\n")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_transcribe_arguments(parser)
    return transcribe_command(parser.parse_args(argv))


def test_cli_reports_each_bad_input_and_transcribes_the_rest(model_path, files, tmp_path, capsys):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    (tmp_path / "notes.txt").write_text("not audio\n")
    soundfile.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), RATE)
    (tmp_path / "no_audio_here").mkdir()
    bad = ["missing.wav", "empty.wav", "corrupt.flac", "notes.txt", "zero.wav", "no_audio_here"]
    argv = [str(files[0]), *(str(tmp_path / name) for name in bad), str(files[1])]
    status = run_cli(["--model", model_path, "--device", "cpu", *argv])
    out, err = capsys.readouterr()
    expected = asr.load_model(model_path).transcribe(files[:2])
    assert status == 1
    assert out.splitlines() == [f"{r.path}\t{r.text}" for r in expected]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == len(bad)
    for name, line in zip(bad, errors):
        assert name in line, line


def test_cli_prints_just_the_text_for_one_file(model_path, files, capsys):
    assert run_cli(["--model", model_path, str(files[2])]) == 0
    out, _ = capsys.readouterr()
    assert out == asr.load_model(model_path).transcribe(files[2])[0].text + "\n"


def test_cli_writes_every_format_mirroring_folders(model_path, files, tmp_path):
    folder = files[0].parent
    out = tmp_path / "out"
    argv = [
        "--model",
        model_path,
        "--output-dir",
        str(out),
        "--format",
        "txt",
        "json",
        "srt",
        "vtt",
    ]
    assert run_cli([*argv, str(folder)]) == 0
    expected = {p.stem: r for p, r in zip(files, asr.load_model(model_path).transcribe(files))}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{fmt}" for stem in LENGTHS for fmt in ("txt", "json", "srt", "vtt")
    )
    for stem, result in expected.items():
        assert (out / f"{stem}.txt").read_text() == result.text + "\n"
        saved = json.loads((out / f"{stem}.json").read_text())
        assert saved["text"] == result.text and len(saved["words"]) == len(result.words)
        assert saved["words"][0]["start"] == round(result.words[0].start, 3)
        assert (out / f"{stem}.srt").read_text().startswith("1\n00:00:0")
        assert (out / f"{stem}.vtt").read_text().startswith("WEBVTT\n\n00:00:0")


def test_cli_beam_search_with_an_arpa_lm_outputs_only_its_words(
    model_path, files, tmp_path, capsys
):
    lm = tmp_path / "lm.arpa"
    vocabulary = ["a", "i", "y", "ab", "cd", "ef", "po"]
    NgramLM.from_ngrams({(word,): -1.0 for word in vocabulary}).write_arpa(lm)
    argv = ["--model", model_path, "--lm", str(lm), "--beam-size", "8", "--format", "json"]
    assert run_cli([*argv, str(files[3])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["words"] and {x["word"] for x in result["words"]} <= set(vocabulary)
    assert result["text"] == " ".join(x["word"] for x in result["words"])


def test_bad_model_files_fail_with_a_clear_message(model_path, files, tmp_path, capsys):
    bundle = torch.load(model_path, weights_only=True)
    cases = {
        "random.pt": ({"weights": torch.zeros(3)}, "not an asr model bundle"),
        "lightning.ckpt": ({"state_dict": {}, "pytorch-lightning_version": "2.4"}, "asr export"),
        "text.pt": (None, "not a model file|not a plain tensor file"),
        "mixed.pt": (
            {**bundle, "tokenizer": CharTokenizer("abc").to_dict()},
            "tokenizer has 5 tokens but its CTC head has 29",
        ),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is None:
            path.write_text("hello\n")
        else:
            torch.save(content, path)
        with pytest.raises(BundleError, match=message) as caught:
            asr.load_model(str(path))
        assert str(path) in str(caught.value)
        assert main(["transcribe", "--model", str(path), str(files[0])]) == 2  # a user error
        err = capsys.readouterr().err
        assert err.startswith("asr: error: ") and name in err and err.count("\n") == 1, err


def test_cli_transcribes_real_librispeech_flac_in_chunks(model_path, librispeech_mini, capsys):
    flacs = sorted(librispeech_mini.rglob("*.flac"))[:2]
    argv = ["--model", model_path, "--chunk-seconds", "4", "--chunk-overlap", "1.5"]
    assert run_cli([*argv, "--format", "json", *map(str, flacs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["path"] for line in lines] == [str(p) for p in flacs]
    for flac, line in zip(flacs, lines):
        result, info = json.loads(line), soundfile.info(flac)
        assert result["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-3)
        starts = [x["start"] for x in result["words"]]
        assert result["words"] and starts == sorted(starts)
        assert all(0 <= x["start"] < x["end"] <= result["duration"] + 0.04 for x in result["words"])
        assert all(0 < x["confidence"] <= 1 for x in result["words"])

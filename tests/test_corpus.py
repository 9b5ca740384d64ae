"""Tests of asr/corpus.py and asr/corpus_words.py: the synthetic eSpeak NG demo corpus."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.corpora import synthetic as corpus
from asr.corpora.sentences import number_words, plural, third_person
from asr.corpora.synthetic import (
    CorpusConfig,
    find_synthesizer,
    generate_sentences,
    make_demo_corpus,
    make_voices,
    vocabulary,
)
from asr.text import normalize_text

SMALL = CorpusConfig(
    num_train=20, num_val=5, num_test=5, num_voices=6, noise_prob=0.3, seed=1, num_workers=1
)
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def synthesizer() -> corpus.Synthesizer:
    try:
        return find_synthesizer()
    except RuntimeError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def small_corpus(synthesizer, tmp_path_factory) -> Path:
    return make_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", SMALL, progress=False)


def read_manifests(root: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (root / f"{s}.jsonl").open()] for s in SPLITS}


def variant_of(speaker: str) -> str:
    return speaker.split("+", 1)[1].rsplit("-p", 1)[0]


def test_voices_and_their_variants_are_disjoint_between_splits(small_corpus):
    manifests = read_manifests(small_corpus)
    speakers = {s: {line["speaker"] for line in manifests[s]} for s in SPLITS}
    meta = json.loads((small_corpus / "corpus.json").read_text())
    assert {s: set(meta["voices"][s]) for s in SPLITS} == speakers
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not speakers[a] & speakers[b]
        assert not {variant_of(v) for v in speakers[a]} & {variant_of(v) for v in speakers[b]}
    assert len(speakers["train"]) == 4


def test_default_config_has_400_voices_with_disjoint_variants():
    voices = make_voices(CorpusConfig())
    assert {s: len(v) for s, v in voices.items()} == {"train": 300, "val": 40, "test": 60}
    variants = {s: {v.variant for v in voices[s]} for s in SPLITS}
    assert not variants["train"] & (variants["val"] | variants["test"])
    assert not variants["val"] & variants["test"]
    assert len({v.id for s in SPLITS for v in voices[s]}) == 400
    # Every variant of a split speaks, in several accents.
    assert all(len(variants[s]) * 5 <= len(voices[s]) for s in SPLITS)


def test_test_sentences_never_occur_in_train_or_val(small_corpus):
    texts = {
        s: [line["text"] for line in lines] for s, lines in read_manifests(small_corpus).items()
    }
    assert len(set(texts["test"])) == 5
    assert not set(texts["test"]) & (set(texts["train"]) | set(texts["val"]))


def test_manifest_lines_point_to_16khz_files_of_the_stated_duration(small_corpus):
    manifests = read_manifests(small_corpus)
    assert {s: len(lines) for s, lines in manifests.items()} == {"train": 20, "val": 5, "test": 5}
    for line in [line for lines in manifests.values() for line in lines]:
        assert set(line) == {"audio", "text", "duration", "speaker"}
        info = sf.info(small_corpus / line["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames / 16000 - line["duration"]) < 1e-3
        assert 0.5 < line["duration"] < 12.0


def test_audio_is_audible_never_clipped_and_never_digital_silence(small_corpus):
    for line in [line for lines in read_manifests(small_corpus).values() for line in lines]:
        audio, _ = sf.read(small_corpus / line["audio"], dtype="int16")
        x = audio.astype(np.float64) / 32768
        assert np.sqrt(np.mean(x**2)) > 0.005, line["audio"]
        at_limit = np.abs(audio.astype(np.int32)) >= 32767
        assert not np.any(at_limit[1:] & at_limit[:-1]), line["audio"]
        frames = audio[: audio.size // 400 * 400].reshape(-1, 400)  # 25 ms frames
        assert np.all(np.any(frames != 0, axis=1)), f"digital silence in {line['audio']}"


def test_sentences_are_4_to_12_normalized_words_all_in_the_vocabulary(small_corpus):
    words = vocabulary()
    assert len(set(words)) == len(words) >= 1000
    known = set(words)
    for line in [line for lines in read_manifests(small_corpus).values() for line in lines]:
        assert re.fullmatch(r"[a-z]+( [a-z]+){3,11}", line["text"]), line["text"]
        assert normalize_text(line["text"]) == line["text"]
        assert set(line["text"].split()) <= known


def test_grammar_uses_every_vocabulary_word_and_respects_exclude():
    many = generate_sentences(20000, random.Random(1))
    assert len(set(many)) == 20000
    assert {w for s in many for w in s.split()} == set(vocabulary())
    assert generate_sentences(50, random.Random(3)) == generate_sentences(50, random.Random(3))
    first = generate_sentences(200, random.Random(7))
    again = generate_sentences(200, random.Random(7), exclude=first[:100])
    assert not set(again) & set(first[:100])


def test_word_forms():
    assert [number_words(n) for n in (2, 13, 40, 47)] == ["two", "thirteen", "forty", "forty seven"]
    assert [plural(n) for n in ("box", "baby", "child", "key", "knife")] == [
        "boxes", "babies", "children", "keys", "knives",
    ]  # fmt: skip
    assert [third_person(v) for v in ("catch", "carry", "go", "play")] == [
        "catches", "carries", "goes", "plays",
    ]  # fmt: skip


def test_same_seed_gives_identical_files_whatever_the_number_of_workers(small_corpus, tmp_path):
    again = make_demo_corpus(tmp_path / "again", dataclasses.replace(SMALL, num_workers=2), False)
    files = sorted(p.relative_to(small_corpus) for p in small_corpus.rglob("*.*"))
    assert sorted(p.relative_to(again) for p in again.rglob("*.*")) == files
    for name in files:
        if name.name != "corpus.json":  # holds timings
            assert (again / name).read_bytes() == (small_corpus / name).read_bytes(), name


def test_second_call_returns_without_resynthesizing(small_corpus):
    before = {p: p.stat().st_mtime_ns for p in small_corpus.rglob("*")}
    assert make_demo_corpus(small_corpus, SMALL, progress=False) == small_corpus
    assert {p: p.stat().st_mtime_ns for p in small_corpus.rglob("*")} == before


def test_folder_with_another_corpus_or_other_files_is_refused(small_corpus, tmp_path):
    with pytest.raises(FileExistsError, match="other settings"):
        make_demo_corpus(small_corpus, dataclasses.replace(SMALL, seed=2), progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_demo_corpus(tmp_path, SMALL, progress=False)


def test_interrupted_run_leaves_no_corpus_and_the_next_run_completes(
    synthesizer, tmp_path, monkeypatch
):
    config = dataclasses.replace(SMALL, num_train=6, num_val=2, num_test=2, noise_prob=0.0)
    real_render, calls = corpus._render, []

    def failing_render(job):
        calls.append(job)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_render(job)

    monkeypatch.setattr(corpus, "_render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        make_demo_corpus(tmp_path / "demo", config, progress=False)
    assert not (tmp_path / "demo").exists()
    assert (tmp_path / "demo.partial").is_dir()
    monkeypatch.setattr(corpus, "_render", real_render)
    out = make_demo_corpus(tmp_path / "demo", config, progress=False)
    assert len((out / "train.jsonl").read_text().splitlines()) == 6
    assert not (tmp_path / "demo.partial").exists()


def speech(voice: str, text: str = "the old farmer carried a heavy box") -> corpus.Speech:
    return corpus.Speech(voice, text, 170, 50, 50, 7)


def test_different_voices_differ_and_the_same_request_repeats_exactly(synthesizer):
    backend = synthesizer.open()
    first = backend.synthesize(speech("en-us+m3"))
    other = backend.synthesize(speech("en-gb-scotland+f2"))
    repeat = backend.synthesize(speech("en-us+m3"))
    assert np.array_equal(first, repeat)
    length = min(first.size, other.size)
    assert first.size > 0.5 * 22050
    assert not np.allclose(first[:length], other[:length], atol=2000)


def test_noise_is_mixed_at_the_planned_snr(synthesizer, tmp_path):
    config = dataclasses.replace(SMALL, noise_prob=1.0, noise_snr_db=(10.0, 10.0))
    jobs = corpus._plan(config, make_voices(config))["train"]
    corpus._init_worker(synthesizer, str(tmp_path))
    for job in [next(j for j in jobs if j.noise == kind) for kind in corpus.NOISE_KINDS]:
        noisy = dataclasses.replace(job, level_db=-35.0, path="noisy.wav")
        clean = dataclasses.replace(noisy, noise=None, path="clean.wav")
        corpus._render(noisy), corpus._render(clean)
        noise = sf.read(tmp_path / "noisy.wav")[0] - sf.read(tmp_path / "clean.wav")[0]
        noise_db = 20 * np.log10(np.sqrt(np.mean(noise**2)))
        assert noise_db == pytest.approx(-35.0 - 10.0, abs=0.5), job.noise


def test_missing_synthesizer_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import fails
    monkeypatch.setenv("PATH", "")
    with pytest.raises(
        RuntimeError, match="pip install espeakng-loader.*apt-get install espeak-ng"
    ):
        find_synthesizer()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="no espeak-ng program on PATH")
def test_espeak_program_backend_speaks():
    backend = corpus.Synthesizer("program", shutil.which("espeak-ng")).open()
    assert backend.synthesize(speech("en-us+m3")).size > 0.5 * 22050

"""asr.corpora.an4 and recipes/an4 on a small AN4-layout corpus built here (SPHERE and WAV audio)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile

from asr.checkpoint import load_bundle
from asr.corpora.an4 import (
    download_an4,
    hold_out_speakers,
    parse_transcription_line,
    prepare_an4,
    read_transcription,
    split_utterances,
)
from asr.data.manifest import read_manifest
from asr.inference.lexicon import read_lexicon
from asr.inference.lm import arpa_words, read_arpa
from asr.text import normalize_text

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
WORDS = ["A", "B", "C", "ENTER", "RUBOUT", "ONE", "TWO", "NINE"]
TRAIN_SPEAKERS = ["fash", "fbbh", "mcel", "mjwl", "mmxg"]
TEST_SPEAKERS = ["fcaw", "mjgm"]


def make_an4(root: Path, per_speaker: int = 3) -> Path:
    """an4/ with etc/ lists and wav/ audio: tone sequences, one pitch per word.

    Training speakers 0-2 are SPHERE (.sph), the rest WAV; training transcriptions carry
    <s> </s>, test ones do not. Returns the an4/ folder.
    """
    an4, rng = root / "an4", np.random.default_rng(0)
    (an4 / "etc").mkdir(parents=True)
    for split, speakers, folder in (("train", TRAIN_SPEAKERS, "an4_clstk"),
                                    ("test", TEST_SPEAKERS, "an4test_clstk")):  # fmt: skip
        fileids, lines = [], []
        for s, speaker in enumerate(speakers):
            for u in range(per_speaker):
                utt_id = f"an{100 * s + u}-{speaker}-b"
                words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=rng.integers(1, 4))]
                fileid = f"{folder}/{speaker}/{utt_id}"
                suffix = ".sph" if split == "train" and s < 3 else ".wav"
                write_tones(an4 / "wav" / f"{fileid}{suffix}", words, rng)
                fileids.append(fileid)
                text = " ".join(words)
                lines.append(
                    f"<s> {text} </s> ({utt_id})" if split == "train" else f"{text} ({utt_id})"
                )
        (an4 / "etc" / f"an4_{split}.fileids").write_text("\n".join(fileids) + "\n")
        (an4 / "etc" / f"an4_{split}.transcription").write_text("\n".join(lines) + "\n")
    return an4


def write_tones(path: Path, words: list[str], rng: np.random.Generator) -> None:
    t = np.arange(int(0.3 * RATE)) / RATE
    pieces = []
    for word in words:
        pieces += [0.3 * np.sin(2 * np.pi * (300 + 120 * WORDS.index(word)) * t), np.zeros(1600)]
    wave = np.concatenate(pieces)
    wave += 0.01 * rng.standard_normal(len(wave))
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "NIST" if path.suffix == ".sph" else "WAV"
    soundfile.write(path, wave.astype(np.float32), RATE, format=fmt, subtype="PCM_16")


@pytest.fixture(scope="module")
def an4_dir(tmp_path_factory) -> Path:
    return make_an4(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize(
    "line, expected",
    [
        ("<s> R U B O U T </s> (an251-fash-b)", ("an251-fash-b", "R U B O U T")),
        ("ENTER SIX TWO (cen7-fcaw-b)", ("cen7-fcaw-b", "ENTER SIX TWO")),
        ("<s>YES</s>   (an10-mjwl-b)  ", ("an10-mjwl-b", "YES")),
    ],
)
def test_transcription_lines_parse_with_and_without_sentence_marks(line, expected):
    assert parse_transcription_line(line) == expected


def test_malformed_transcription_names_file_and_line(tmp_path: Path):
    path = tmp_path / "an4_train.transcription"
    path.write_text("<s> YES </s> (an1-fash-b)\n<s> NO </s>\n")
    with pytest.raises(ValueError, match=r"an4_train.transcription:2: expected 'TEXT"):
        read_transcription(path)


def test_utterances_read_sphere_and_wav_with_speakers_and_durations(an4_dir: Path):
    train = split_utterances(an4_dir, "train")
    assert len(train) == 15 and {u.speaker for u in train} == set(TRAIN_SPEAKERS)
    assert {Path(u.audio).suffix for u in train} == {".sph", ".wav"}
    for utt in train:
        info = soundfile.info(utt.audio)
        assert utt.duration == pytest.approx(info.frames / RATE)
        assert Path(utt.audio).stem == utt.id and Path(utt.audio).parent.name == utt.speaker
        assert "<s>" not in utt.text and utt.text.split()[0] in WORDS
    test = split_utterances(an4_dir.parent, "test")  # the folder holding an4/ works too
    assert [u.speaker for u in test] == ["fcaw"] * 3 + ["mjgm"] * 3


def test_validation_speakers_come_from_training_only(an4_dir: Path, tmp_path: Path):
    paths = prepare_an4(an4_dir, tmp_path, val_fraction=0.3, seed=1)
    train, val, test = (read_manifest(paths[name]) for name in ("train", "val", "test"))
    train_speakers, val_speakers = {u.speaker for u in train}, {u.speaker for u in val}
    assert not train_speakers & val_speakers
    assert train_speakers | val_speakers == set(TRAIN_SPEAKERS)
    assert len(val) >= 0.3 * 15 and len(train) >= 3
    assert {u.speaker for u in test} == set(TEST_SPEAKERS)
    assert sorted(u.id for u in train + val) == sorted(
        u.id for u in split_utterances(an4_dir, "train")
    )


def test_speaker_hold_out_depends_on_the_seed_only(an4_dir: Path):
    utterances = split_utterances(an4_dir, "train")
    first = hold_out_speakers(utterances, 0.2, seed=3)
    assert first == hold_out_speakers(list(utterances), 0.2, seed=3)
    held = {
        tuple(sorted({u.speaker for u in hold_out_speakers(utterances, 0.2, s)[1]}))
        for s in range(6)
    }
    assert len(held) > 1  # different seeds hold out different speakers


def test_file_ids_without_transcriptions_are_named(an4_dir: Path, tmp_path: Path):
    corpus = tmp_path / "an4"
    (corpus / "etc").mkdir(parents=True)
    (corpus / "wav").symlink_to(an4_dir / "wav")
    (corpus / "etc/an4_test.fileids").write_text((an4_dir / "etc/an4_test.fileids").read_text())
    lines = (an4_dir / "etc/an4_test.transcription").read_text().splitlines()
    (corpus / "etc/an4_test.transcription").write_text("\n".join(lines[1:]) + "\n")
    missing = parse_transcription_line(lines[0])[0]
    with pytest.raises(
        ValueError, match=f"1 file id\\(s\\) without a transcription \\['{missing}'\\]"
    ):
        split_utterances(corpus, "test")


def test_missing_audio_names_both_file_types(an4_dir: Path, tmp_path: Path):
    corpus = tmp_path / "an4"
    (corpus / "etc").mkdir(parents=True)
    for name in ("an4_test.fileids", "an4_test.transcription"):
        (corpus / "etc" / name).write_text((an4_dir / "etc" / name).read_text())
    with pytest.raises(FileNotFoundError, match=r"an\d+-fcaw-b\.sph.*an\d+-fcaw-b\.wav"):
        split_utterances(corpus, "test")


def test_download_fetches_and_extracts_the_tarball(an4_dir: Path, tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "an4_sphere.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(an4_dir, arcname="an4")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/an4_sphere.tar.gz"
        corpus = download_an4(tmp_path / "data", url, md5)
    finally:
        server.shutdown()
        server.server_close()
    assert corpus == tmp_path / "data" / "an4"
    assert [u.id for u in split_utterances(corpus, "test")] == [
        u.id for u in split_utterances(an4_dir, "test")
    ]
    assert download_an4(tmp_path / "data", "http://127.0.0.1:9/gone.tar.gz") == corpus  # no fetch


def load_recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("recipe_an4", REPO / "recipes/an4/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The recipe's own model (configs/an4.yaml: fine-tuned from the shipped
# demo-synthetic-char-chunk, so its shape stays), trained for 2 steps only.
TINY = [
    "trainer.max_steps=2",
    "trainer.val_every_n_steps=1",
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "data.max_batch_seconds=6",
]


def test_recipe_runs_every_stage_end_to_end(an4_dir: Path, tmp_path: Path, capsys):
    recipe, work = load_recipe(), tmp_path / "work"
    argv = ["--work-dir", str(work), "--data-dir", str(an4_dir.parent), "--url",
            "http://127.0.0.1:9/an4_sphere.tar.gz", "--val-fraction", "0.2", *TINY]  # fmt: skip
    assert recipe.main(argv) == 0
    manifests = {
        name: read_manifest(work / "manifests" / f"{name}.jsonl")
        for name in ("train", "val", "test")
    }
    assert len(manifests["test"]) == 6 and len(manifests["train"]) + len(manifests["val"]) == 15
    tokenizer = json.loads((work / "tokenizer_char.json").read_text())
    assert set("".join(tokenizer["chars"])) == set("".join(WORDS).lower())
    exp = work / "exp"
    assert (exp / "model.pt").is_file()

    # stage 5: the 3-gram and the lexicon hold the training words, and only those
    train_words = {w for u in manifests["train"] for w in normalize_text(u.text).split()}
    arpa, lexicon = work / "lm" / "words.3gram.arpa", work / "lm" / "lexicon.txt"
    assert set(arpa_words(arpa)) == train_words
    assert read_arpa(arpa).order == 3
    spellings = read_lexicon(lexicon, load_bundle(exp / "model.pt").tokenizer)
    assert spellings == {word: [list(word)] for word in train_words}  # char tokens: letters

    # stage 6: val and test greedy; the LM's weights tuned on val by the command that then
    # decodes test with the choice; what is reported never loses to greedy on val
    printed = capsys.readouterr().out
    results = json.loads((exp / "RESULTS.json").read_text())
    table = (exp / "RESULTS.md").read_text()
    val, test = work / "manifests" / "val.jsonl", work / "manifests" / "test.jsonl"
    lm_dir = exp / "eval" / "lm" / "test"
    assert (f"--manifest {test} --output-dir {lm_dir} --device cpu --lm {arpa} --lexicon "
            f"{lexicon} --tune-lm {val}") in printed  # fmt: skip
    tuned = json.loads((work / "lm" / "words.3gram.arpa.tuned.json").read_text())
    for name in ("val", "test"):
        greedy = json.loads((exp / "eval" / name / "summary.json").read_text())
        assert greedy["num_utterances"] == len(manifests[name])
        assert results[name]["greedy"] == {"wer": 100 * greedy["wer"], "cer": 100 * greedy["cer"]}
    # the search's own greedy decoding of val is the evaluation's
    assert tuned["greedy_val_wer"] == pytest.approx(results["val"]["greedy"]["wer"] / 100)
    assert results["val"]["lm"] == {"wer": 100 * tuned["val_wer"]}
    assert results["reported"] == tuned["decoding"]
    assert (tuned["decoding"] == "lm") == (tuned["val_wer"] < tuned["greedy_val_wer"])
    with_lm = json.loads((lm_dir / "summary.json").read_text())
    assert with_lm["num_utterances"] == len(manifests["test"])
    row = results["test"]["greedy"]
    if tuned["decoding"] == "lm":
        assert results["test"]["lm"] == {"wer": 100 * with_lm["wer"], "cer": 100 * with_lm["cer"]}
        hypotheses = (lm_dir / "transcripts.jsonl").read_text().splitlines()
        assert {w for line in hypotheses for w in json.loads(line)["text"].split()} <= train_words
        assert f"WER {results['test']['lm']['wer']:.2f} (lm) |" in table
    else:  # the LM lost on val: test is decoded greedily, and the table says why
        assert "lm" not in results["test"] and with_lm["wer"] == greedy["wer"]
        assert (
            f"| test | {row['wer']:.2f} | {row['cer']:.2f} | - | - | WER {row['wer']:.2f} "
            "(greedy) |" in table
        )
        assert "the LM does not beat greedy decoding on val" in table

    # then test live (the model trains chunk-aware: it can stream), decoded as reported
    live_dir = exp / "eval" / "live" / "test"
    live = json.loads((live_dir / "summary.json").read_text())
    assert live["num_utterances"] == len(manifests["test"])
    assert results["test"]["live"] == {"wer": 100 * live["wer"], "cer": 100 * live["cer"]}
    assert results["live"] == "480 + 160 ms chunks"
    command = next(line for line in printed.splitlines() if f"--output-dir {live_dir} " in line)
    assert "--streaming" in command and ("--lm" in command) == (tuned["decoding"] == "lm")
    assert (f"Live (each test file streamed as from a microphone, 480 + 160 ms chunks, decoded "
            f"as reported): WER {live['wer'] * 100:.2f}") in table  # fmt: skip

    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    assert recipe.main([*argv, "--stage", "5"]) == 0  # the LM and every evaluation are reused
    changed = sorted(p.name for p in stamps if p.stat().st_mtime_ns != stamps[p])
    assert changed == ["RESULTS.json", "RESULTS.md"]

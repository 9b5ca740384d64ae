"""asr.corpora.librispeech and recipes/librispeech on the real LibriSpeech sample (librispeech-mini)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from types import ModuleType

import pytest
import soundfile

from asr.corpora.librispeech import (
    download_librispeech,
    part_utterances,
    prepare_manifests,
    read_transcripts,
    write_hf_part,
)
from asr.data.manifest import read_manifest
from asr.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
NO_SERVER = "http://127.0.0.1:9"  # the discard port: any download attempt would fail
MINI_PARTS = {"train-clean-5": 70, "dev-clean": 1, "test-clean": 5}


def load_recipe(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"recipe_{name}", REPO / "recipes" / name / "run.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trans_txt_without_final_newline_keeps_its_last_line(librispeech_mini: Path):
    path = librispeech_mini / "test-clean/1089/134686/1089-134686.trans.txt"
    assert not path.read_bytes().endswith(b"\n")
    pairs = read_transcripts(path)
    assert [utt_id for utt_id, _ in pairs] == ["1089-134686-0000", "1089-134686-0001"]
    assert pairs[1][1] == "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM"


def test_malformed_transcript_line_names_file_and_line(tmp_path: Path):
    path = tmp_path / "1-2.trans.txt"
    path.write_text("1-2-0000 HELLO THERE\nnot-an-id SOMETHING\n")
    with pytest.raises(ValueError, match=r"1-2.trans.txt:2: expected"):
        read_transcripts(path)


def test_manifests_hold_every_utterance_with_header_durations(librispeech_mini, tmp_path):
    paths = prepare_manifests(librispeech_mini, tmp_path, list(MINI_PARTS), num_workers=2)
    for part, count in MINI_PARTS.items():
        utterances = read_manifest(paths[part])
        assert len(utterances) == count
        for utt in utterances:
            speaker, chapter, _ = utt.id.split("-")
            assert speaker == utt.speaker
            assert Path(utt.audio) == librispeech_mini / part / speaker / chapter / f"{utt.id}.flac"
            assert math.isclose(utt.duration, soundfile.info(utt.audio).duration, abs_tol=1e-6)
            assert utt.text == utt.text.upper() and utt.text.strip()
    test = {u.id: u.text for u in read_manifest(paths["test-clean"])}
    assert test["1089-134686-0001"] == "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM"


def test_parts_already_extracted_are_not_downloaded(librispeech_mini: Path):
    parts = list(MINI_PARTS)  # train-clean-5 is not on OpenSLR resource 12: never fetched here
    assert download_librispeech(librispeech_mini.parent, parts, NO_SERVER) == librispeech_mini
    assert download_librispeech(librispeech_mini, parts, NO_SERVER) == librispeech_mini


def test_unknown_part_to_download_is_named(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown LibriSpeech part 'train-clean-5'"):
        download_librispeech(tmp_path, ["train-clean-5"], NO_SERVER)


def test_hugging_face_rows_written_back_give_the_same_utterances(librispeech_mini, tmp_path):
    datasets = pytest.importorskip("datasets")
    original = part_utterances(librispeech_mini / "test-clean")
    rows = datasets.Dataset.from_dict(
        {
            "id": [u.id for u in original],
            "text": [u.text for u in original],
            "audio": [{"bytes": Path(u.audio).read_bytes(), "path": None} for u in original],
        }
    ).cast_column("audio", datasets.Audio(decode=False))
    part_dir = write_hf_part(rows, tmp_path / "LibriSpeech", "test-clean")
    copied = part_utterances(part_dir)
    assert [(u.id, u.text, u.duration, u.speaker) for u in copied] == [
        (u.id, u.text, u.duration, u.speaker) for u in original
    ]
    assert all(Path(a.audio).read_bytes() == Path(b.audio).read_bytes()
               for a, b in zip(copied, original))  # fmt: skip
    assert not (part_dir / ".hf-incomplete").exists()


TINY = [
    "model=xs",
    "trainer.max_steps=2",
    "trainer.val_every_n_steps=1",
    "trainer.precision=32-true",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.progress_bar=false",
    "data.num_workers=0",
    "data.max_batch_seconds=20",
    "tokenizer.vocab_size=64",
]


def test_recipe_runs_every_stage_after_download_and_reruns_as_a_no_op(librispeech_mini, tmp_path):
    recipe = load_recipe("librispeech")
    work = tmp_path / "work"
    argv = ["--work-dir", str(work), "--data-dir", str(librispeech_mini.parent), "--mirror",
            NO_SERVER, "--train-parts", "train-clean-5", "--dev-parts", "dev-clean",
            "--test-parts", "test-clean", "--nj", "2", "--device", "cpu", *TINY]  # fmt: skip
    assert recipe.main(argv) == 0

    manifests = work / "manifests"
    assert len(read_manifest(manifests / "train.jsonl")) == 70
    assert len(read_manifest(manifests / "dev.jsonl")) == 1
    tokenizer = load_tokenizer(work / "tokenizer_unigram64.json")
    assert tokenizer.kind == "unigram" and tokenizer.vocab_size == 64
    exp = work / "exp_s"
    assert (exp / "model.pt").is_file() and (exp / "model_best2.pt").is_file()
    for model in ("model", "model_best2"):
        for part, count in (("dev-clean", 1), ("test-clean", 5)):
            summary = json.loads((exp / "eval" / model / part / "summary.json").read_text())
            assert summary["num_utterances"] == count
            assert summary["words"]["ref_words"] > 0 and 0.0 <= summary["wer"] < 10.0
    table = (exp / "RESULTS.md").read_text()
    assert "| model_best2.pt |" in table and "test-clean" in table

    stamps = {p: p.stat().st_mtime_ns for p in exp.rglob("*") if p.is_file()}
    assert recipe.main(argv) == 0  # every stage finds its output and reuses it
    again = {p: p.stat().st_mtime_ns for p in exp.rglob("*") if p.is_file()}
    changed = [p.name for p in stamps if again[p] != stamps[p]]
    assert changed == ["RESULTS.md"]


def test_recipe_refuses_stage_numbers_out_of_range(tmp_path: Path):
    recipe = load_recipe("librispeech")
    with pytest.raises(SystemExit, match="--stop-stage"):
        recipe.main(["--work-dir", str(tmp_path), "--stage", "3", "--stop-stage", "7"])
    assert not os.listdir(tmp_path)

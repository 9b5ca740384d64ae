"""Tests for asr/recipe.py: stages run in order, only the selected range, and a bad range is
refused before anything runs; `asr` commands are printed and their failure stops the recipe;
the word LM of the demo's and the AN4 recipe's lm stage holds the training words only, spelled
for the model, and is reused until the model or the transcripts change."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from asr.recipe import build_word_lm, run_asr, run_stages, up_to_date, word_lm_paths


def stages(ran: list[str]) -> list:
    return [(name, lambda name=name: ran.append(name)) for name in ("a", "b", "c", "d")]


def test_only_the_selected_stages_run_in_order(capsys):
    ran: list[str] = []
    assert run_stages(stages(ran), 2, 3) == 0
    assert ran == ["b", "c"]
    assert "== stage 2: b" in capsys.readouterr().out


@pytest.mark.parametrize(("first", "last"), [(0, 2), (3, 2), (1, 5)])
def test_a_range_outside_the_recipe_is_refused_before_anything_runs(first, last):
    ran: list[str] = []
    with pytest.raises(SystemExit, match="--stop-stage <= 4"):
        run_stages(stages(ran), first, last)
    assert ran == []


def test_stages_keep_a_log_level_the_caller_set_and_default_to_info():
    log = logging.getLogger("asr")
    before = log.level
    try:
        log.setLevel(logging.DEBUG)  # `asr -v demo`
        run_stages(stages([]), 1, 1)
        assert log.level == logging.DEBUG
        log.setLevel(logging.NOTSET)  # a recipe's run.py, or run_demo from Python
        run_stages(stages([]), 1, 1)
        assert log.level == logging.INFO
    finally:
        log.setLevel(before)


def test_an_asr_command_is_printed_then_run_and_a_failure_stops(capsys):
    calls: list[list[str]] = []

    def main(command: list[str]) -> int:
        calls.append(command)
        return 0 if command[0] == "ok" else 2

    run_asr(main, ["ok", "--x", "1"])
    assert capsys.readouterr().out == "asr ok --x 1\n"
    with pytest.raises(SystemExit, match="failed: asr bad --y"):
        run_asr(main, ["bad", "--y"])
    assert calls == [["ok", "--x", "1"], ["bad", "--y"]]


def test_an_output_is_up_to_date_only_when_it_exists_and_is_not_older(tmp_path):
    source, output = tmp_path / "model.pt", tmp_path / "summary.json"
    source.write_text("m")
    assert not up_to_date(output, source)
    output.write_text("s")
    os.utime(source, (100, 100))
    os.utime(output, (100, 100))
    assert up_to_date(output, source)
    os.utime(source, (200, 200))
    assert not up_to_date(output, source)


TRAIN = ["the cat sat", "the dog sat down", "a cat ran"]


@pytest.fixture
def model_and_manifest(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny char model.pt (its weights never matter here) and a manifest of TRAIN."""
    from asr.audio import LogMelFeatures
    from asr.checkpoint import save_bundle
    from asr.config import EncoderConfig, FeatureConfig
    from asr.data.manifest import Utterance, write_manifest
    from asr.model import CtcModel
    from asr.tokenizer import CharTokenizer

    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz")
    config = EncoderConfig(d_model=16, num_layers=1, num_heads=2, subsampling_channels=8)
    model = tmp_path / "exp" / "model.pt"
    model.parent.mkdir()
    frontend = LogMelFeatures(FeatureConfig())
    save_bundle(model, CtcModel(config, tokenizer.vocab_size), frontend, tokenizer)
    manifest = tmp_path / "train.jsonl"
    utts = [Utterance(f"u{i}", str(tmp_path / f"{i}.wav"), t, 1.0) for i, t in enumerate(TRAIN)]
    write_manifest(utts, manifest)
    return model, manifest


def test_word_lm_holds_the_training_words_spelled_for_the_model(model_and_manifest, tmp_path):
    from asr.inference.lm import arpa_words, read_arpa

    model, manifest = model_and_manifest
    arpa, lexicon = build_word_lm(manifest, model, tmp_path / "lm", order=2)
    assert (arpa, lexicon) == word_lm_paths(tmp_path / "lm", 2)
    assert arpa.name == "words.2gram.arpa" and lexicon.name == "lexicon.txt"
    words = {w for text in TRAIN for w in text.split()}
    assert set(arpa_words(arpa)) == words
    assert read_arpa(arpa).order == 2
    lines = lexicon.read_text(encoding="utf-8").splitlines()
    assert {line.split("\t")[0]: line.split("\t")[1] for line in lines} == {
        w: " ".join(w) for w in words
    }


def test_word_lm_is_reused_until_the_model_or_the_transcripts_change(
    model_and_manifest, tmp_path, capsys
):
    model, manifest = model_and_manifest
    arpa, lexicon = build_word_lm(manifest, model, tmp_path / "lm")
    for path in (model, manifest):
        os.utime(path, (100, 100))
    for path in (arpa, lexicon):
        os.utime(path, (200, 200))
    capsys.readouterr()
    build_word_lm(manifest, model, tmp_path / "lm")
    assert capsys.readouterr().out.startswith("reusing")
    assert arpa.stat().st_mtime == 200
    os.utime(manifest, (300, 300))  # new transcripts: the LM is made again
    build_word_lm(manifest, model, tmp_path / "lm")
    assert capsys.readouterr().out.startswith("3-gram Kneser-Ney LM from 3 training transcripts")
    assert arpa.stat().st_mtime > 200


def test_word_lm_needs_the_trained_model(model_and_manifest, tmp_path):
    _, manifest = model_and_manifest
    with pytest.raises(SystemExit, match="no .*missing.pt"):
        build_word_lm(manifest, tmp_path / "missing.pt", tmp_path / "lm")


@pytest.mark.parametrize(
    ("encoder", "normalize", "live"),
    [
        ({}, "global", False),  # centred convolutions look ahead
        ({"chunk_conv": True, "dynamic_chunk_training": True}, "utterance", False),
        ({"chunk_conv": True, "dynamic_chunk_training": True}, "running", True),
        ({"causal_conv": True}, "none", True),
    ],
)
def test_a_recipe_scores_live_only_what_can_stream(tmp_path, encoder, normalize, live):
    """`can_go_live`: the recipes' test of whether to score a model streamed, the streaming
    engine's own (a model it accepts, and only those)."""
    import asr
    from asr.audio import LogMelFeatures
    from asr.checkpoint import save_bundle
    from asr.config import EncoderConfig, FeatureConfig
    from asr.model import CtcModel
    from asr.recipe import can_go_live
    from asr.tokenizer import CharTokenizer

    tokenizer = CharTokenizer("abc")
    config = EncoderConfig(d_model=16, num_layers=1, num_heads=2, subsampling_channels=8, **encoder)
    frontend = LogMelFeatures(FeatureConfig(normalize=normalize))
    save_bundle(tmp_path / "m.pt", CtcModel(config, tokenizer.vocab_size), frontend, tokenizer)
    assert can_go_live(tmp_path / "m.pt") is live
    transcriber = asr.load_model(tmp_path / "m.pt")
    if live:
        transcriber.stream()
    else:
        with pytest.raises(ValueError):
            transcriber.stream()

"""Tests for asr/scoring/tune.py and `asr evaluate --tune-lm`: the search picks the point that
decoding each point alone finds best, its one acoustic pass gives the same transcripts as one
pass per point, the choice is written and read back, an LM that loses falls back to greedy, and
an empty validation set is refused; where the best point lies on the grid's edge the search
steps past it.

The model is the shipped demo-synthetic-char (it hears eSpeak NG speech); the LM knows the
validation sentences, so beam search with it clearly beats greedy decoding (WER 38% greedy).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from serving_helpers import MODEL, RATE, SENTENCES, speak

from asr.cli import main
from asr.data.manifest import Utterance, write_manifest
from asr.inference.decoding import make_decoders
from asr.inference.lm import train_ngram
from asr.inference.options import ChunkingOptions, DecodingOptions
from asr.inference.transcribe import load_model
from asr.scoring.evaluate import decode_and_score
from asr.scoring.metrics import ErrorCounts
from asr.scoring.tune import (
    GridPoint,
    LmGrid,
    best_point,
    beyond,
    extension,
    load_tuned,
    tune_lm,
    tuned_path,
)

# Known from the demo model on these sentences: the WERs of these points all differ, and the
# strongest weight with the largest word score is best (the LM has seen the sentences).
GRID = LmGrid(lm_weights=(0.0, 2.0), word_scores=(-1.0, 2.0), extend=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Each test decodes the same small set many times; on a busy 2-core machine two torch
    threads mostly wait for each other there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> Path:
    """A manifest of the eight probe sentences, one eSpeak NG file each."""
    folder = tmp_path_factory.mktemp("val")
    utterances = []
    for i, text in enumerate(SENTENCES):
        wave = speak([text], pause=0.2)
        soundfile.write(folder / f"u{i}.wav", wave, RATE)
        utterances.append(Utterance(f"u{i}", str(folder / f"u{i}.wav"), text, len(wave) / RATE))
    write_manifest(utterances, folder / "val.jsonl")
    return folder / "val.jsonl"


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> dict[str, str]:
    """ "good": a 3-gram of the validation sentences; "bad": one of words they never use (with
    its lexicon, beam search can only write those words)."""
    folder = tmp_path_factory.mktemp("lm")
    good = train_ngram(SENTENCES, 3).write_arpa(folder / "good.arpa")
    bad = train_ngram(["zebras quietly jump over lazy yaks", "purple monkeys dance at night"])
    return {"good": str(good), "bad": str(bad.write_arpa(folder / "bad.arpa"))}


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL, "cpu")


def test_the_search_picks_the_point_that_decoding_each_point_alone_finds_best(
    model, val, lms, tmp_path
):
    options = DecodingOptions(lm=lms["good"])
    found = tune_lm(model, val, options, GRID)
    # The slow path: `asr evaluate`'s decode_and_score, once per point.
    alone = {
        (o.lm_weight, o.word_score): decode_and_score(model, val, tmp_path / str(k), o,
                                                      report=False, num_resamples=1).words
        for k, o in enumerate(GRID.points(options))
    }  # fmt: skip
    greedy = decode_and_score(model, val, tmp_path / "greedy", report=False, num_resamples=1)
    assert {(p.lm_weight, p.word_score): p.errors for p in found.points} == alone
    assert found.greedy == greedy.words
    argmin = min(alone, key=lambda point: alone[point].errors)
    assert [e.errors for e in alone.values()].count(alone[argmin].errors) == 1  # one best point
    assert (found.best.lm_weight, found.best.word_score) == argmin == (2.0, 2.0)
    assert found.best.wer < max(p.wer for p in found.points)  # the grid matters here
    assert found.lm_beats_greedy and found.best.wer < greedy.wer
    assert found.chosen == dataclasses.replace(options, lm_weight=2.0, word_score=2.0)


def test_one_acoustic_pass_gives_the_transcripts_of_decoding_each_point_alone(model, val, lms):
    # 3 s windows: most sentences are cut in two, so each decoder's windows are stitched; a
    # missing file fails in every decoder's results alike.
    inputs = [str(val.parent / f"u{i}.wav") for i in range(len(SENTENCES))]
    inputs.append(str(val.parent / "missing.wav"))
    chunking = ChunkingOptions(chunk_seconds=3.0, chunk_overlap=1.0, batch_seconds=12.0)
    options = [DecodingOptions(), *GRID.points(DecodingOptions(lm=lms["good"]))]
    passes = []
    hook = model.bundle.model.register_forward_hook(lambda *_: passes.append(1))
    try:
        many = model.transcribe_many(inputs, chunking, options=options)
        batches = len(passes)
        alone = [model.transcribe(inputs, chunking, options=o) for o in options]
    finally:
        hook.remove()
    assert len(passes) - batches == len(options) * batches  # one pass for all the points
    assert [[r.to_dict() for r in rs] for rs in many] == [[r.to_dict() for r in rs] for rs in alone]
    assert len({tuple(r.text for r in rs) for rs in many}) > 2  # the points really differ
    assert all(rs[-1].error and "missing.wav" in rs[-1].error for rs in many)
    decoders = make_decoders(model.bundle.tokenizer, options)
    assert all(d.loaded_lm is decoders[1].loaded_lm for d in decoders[2:])  # one LM loaded


def test_the_choice_is_written_next_to_the_lm_used_for_the_test_set_and_read_back(
    model, val, lms, capsys
):
    weights, scores = ",".join(map(str, GRID.lm_weights)), ",".join(map(str, GRID.word_scores))
    status = main(["evaluate", "--model", MODEL, "--manifest", str(val), "--lm", lms["good"],
                   "--tune-lm", str(val), "--tune-lm-weights", weights,
                   f"--tune-word-scores={scores}", "--tune-lm-extend", "0",
                   "--resamples", "1"])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0 and "tuned on the test set" in err  # --tune-lm is --manifest here
    written = json.loads(tuned_path(lms["good"]).read_text())
    assert (written["decoding"], written["lm_weight"], written["word_score"]) == ("lm", 2.0, 2.0)
    assert written["beam_size"] == 50 and written["lm"] == lms["good"]
    assert len(written["grid"]) == 4 and written["val_wer"] < written["greedy_val_wer"]
    assert written["val_wer"] == min(p["wer"] for p in written["grid"])
    assert written["validation"]["sha256"] == hashlib.sha256(val.read_bytes()).hexdigest()
    assert written["validation"]["utterances"] == len(SENTENCES) and written["seconds"] > 0
    # The test set here is the validation set: evaluated with the chosen values, same WER.
    assert f"WER {100 * written['val_wer']:.2f}%" in out
    assert "lm_weight \\ word_score" in out and "chosen: the LM" in out
    assert load_tuned(tuned_path(lms["good"])) == DecodingOptions(
        lm=lms["good"], lm_weight=2.0, word_score=2.0
    )


def test_an_lm_that_loses_to_greedy_is_reported_and_greedy_is_evaluated(val, lms, tmp_path, capsys):
    status = main(["evaluate", "--model", MODEL, "--manifest", str(val), "--lm", lms["bad"],
                   "--tune-lm", str(val), "--tune-lm-weights", "0.5,1", "--tune-word-scores",
                   "0", "--resamples", "1", "--output-dir", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    written = json.loads(tuned_path(lms["bad"]).read_text())
    assert written["decoding"] == "greedy" and written["lm_beats_greedy"] is False
    assert written["val_wer"] > written["greedy_val_wer"]
    assert "with greedy decoding: the LM does not beat it" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["wer"] == pytest.approx(written["greedy_val_wer"])
    assert load_tuned(tuned_path(lms["bad"])) == DecodingOptions()


def test_the_choice_goes_where_asked_and_its_flags_give_the_same_options_back(
    val, lms, tmp_path, capsys
):
    """What the LibriSpeech recipe does for each of its models: the choice in its own file,
    then the other parts decoded with `options_to_flags` of it."""
    import argparse

    from asr.cli.options import add_decoding_arguments, decoding_options, options_to_flags

    chosen, beside_lm = tmp_path / "model.tuned.json", tuned_path(lms["good"])
    before = beside_lm.stat().st_mtime_ns if beside_lm.exists() else None
    status = main(["evaluate", "--model", MODEL, "--manifest", str(val), "--lm", lms["good"],
                   "--tune-lm", str(val), "--tune-lm-weights", "1,2", "--tune-word-scores",
                   "2", "--tune-lm-output", str(chosen), "--tune-lm-extend", "0",
                   "--resamples", "1"])  # fmt: skip
    assert status == 0 and chosen.is_file()
    assert (beside_lm.stat().st_mtime_ns if beside_lm.exists() else None) == before
    options = load_tuned(chosen)
    assert (options.lm_weight, options.word_score) == (2.0, 2.0)
    parser = argparse.ArgumentParser()
    add_decoding_arguments(parser)
    for wanted in (options, DecodingOptions(), dataclasses.replace(options, log_add=False)):
        assert decoding_options(parser.parse_args(options_to_flags(wanted))) == wanted
    assert options_to_flags(DecodingOptions()) == []


def test_ties_go_to_the_smaller_lm_weight_then_the_word_score_nearer_zero():
    def point(weight: float, score: float, errors: int, threshold: float = 50.0) -> GridPoint:
        return GridPoint(weight, score, threshold, ErrorCounts(substitutions=errors, ref_words=9))

    assert best_point([point(1, 0, 3), point(0.5, 0, 2), point(2, 1, 4)]) == point(0.5, 0, 2)
    assert best_point([point(1, 0, 2), point(0.5, 2, 2), point(2, 0, 2)]) == point(0.5, 2, 2)
    assert best_point([point(1, 2, 2), point(1, -1, 2), point(1, 1, 2)]) == point(1, -1, 2)
    assert best_point([point(1, 0, 2, 80.0), point(1, 0, 2, 20.0)]) == point(1, 0, 2, 20.0)
    with pytest.raises(ValueError, match="word_scores"):
        LmGrid(word_scores=())


def test_a_best_point_on_the_edge_sends_the_search_past_it_and_never_below_weight_zero():
    def points(errors: dict[tuple[float, float], int]) -> list[GridPoint]:
        return [GridPoint(w, s, 50.0, ErrorCounts(substitutions=e, ref_words=99))
                for (w, s), e in errors.items()]  # fmt: skip

    inside = {(w, s): 5 for w in (0.0, 1.0, 2.0) for s in (-1.0, 0.0, 1.0)}
    assert extension(points({**inside, (1.0, 0.0): 1})) == []
    # Best at the largest weight and the lowest word score: one step past both edges.
    ring = extension(points({**inside, (2.0, -1.0): 1}))
    assert ring == [(w, s, 50.0) for w in (0.0, 1.0, 2.0, 3.0) for s in (-2.0, -1.0, 0.0, 1.0)
                    if w == 3.0 or s == -2.0]  # fmt: skip
    # Best at weight 0 and the largest score: no negative weight, a larger score only.
    assert extension(points({**inside, (0.0, 1.0): 1})) == [(w, 2.0, 50.0) for w in (0.0, 1.0, 2.0)]
    assert beyond([0.5, 1.0], 0.5, floor=0.0) == 0.0 and beyond([1.0], 1.0) is None


def test_the_search_past_the_edge_decodes_each_new_point_as_decoding_it_alone_does(
    model, val, lms, tmp_path
):
    options = DecodingOptions(lm=lms["good"])
    once = tune_lm(model, val, options, dataclasses.replace(GRID, extend=1))
    # GRID's best, (2, 2), is its corner: one step past it is weight 4 and word score 5.
    searched = len(GRID.points(options))
    new = [(p.lm_weight, p.word_score) for p in once.points[searched:]]
    assert new == [(w, s) for w in (0.0, 2.0, 4.0) for s in (-1.0, 2.0, 5.0)
                   if w == 4.0 or s == 5.0]  # fmt: skip
    for point in once.points[-2:]:
        alone = decode_and_score(model, val, tmp_path / f"{point.lm_weight}-{point.word_score}",
                                 dataclasses.replace(options, lm_weight=point.lm_weight,
                                                     word_score=point.word_score),
                                 report=False, num_resamples=1)  # fmt: skip
        assert alone.words == point.errors
    assert once.best == best_point(list(once.points)) and once.greedy.ref_words > 0
    twice = tune_lm(model, val, options, dataclasses.replace(GRID, extend=2))
    assert twice.points[: len(once.points)] == once.points
    if extension(list(once.points)):  # the best still on an edge: a second step was taken
        assert len(twice.points) > len(once.points)
    else:
        assert twice.points == once.points


def test_an_empty_validation_set_or_one_without_texts_is_refused(model, lms, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"validation set {empty} has no utterances"):
        tune_lm(model, empty, DecodingOptions(lm=lms["good"]), GRID)
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "a.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(ValueError, match=f"validation set {audio} has no reference texts"):
        tune_lm(model, audio, DecodingOptions(lm=lms["good"]), GRID)
    with pytest.raises(ValueError, match="needs an LM"):
        tune_lm(model, audio, DecodingOptions(), GRID)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tune-lm", "EMPTY"], "validation set EMPTY has no utterances"),
        (["--tune-lm", "EMPTY", "--no-lm"], "--tune-lm needs --model, --manifest and the --lm"),
        (["--tune-lm", "EMPTY", "--tune-lm-weights", "1,x"], "expected numbers separated"),
        (["--tune-lm", "EMPTY", "--tune-lm-extend", "-1"], "extend must be >= 0, got -1"),
        (["--tune-lm", "EMPTY", "--tune-lm-weights=-1,1"], "lm_weights must be >= 0"),
    ],
)
def test_evaluate_tune_lm_refuses_bad_input_in_one_line(val, lms, tmp_path, capsys, args, message):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    message = message.replace("EMPTY", str(empty))
    lm = [] if "--no-lm" in args else ["--lm", lms["good"]]
    args = [a for a in args if a != "--no-lm"]
    assert main(["evaluate", "--model", MODEL, "--manifest", str(val), *lm, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asr: error:") and message in err and err.count("\n") == 1

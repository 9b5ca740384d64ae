"""The built-in demo end to end, shortened (`quick=True`): corpus, training, LM, evaluation,
transcription, summary; then a second run that reuses everything (each stage through
`asr.recipe.run_stages`, as the recipes' stages)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import soundfile
import torch

pytest.importorskip("espeakng_loader", reason="the demo needs eSpeak NG (pip install 'asr[demo]')")

from asr.demo import STAGES, run_demo

WORD_LINE = re.compile(r"^\s+(\d+\.\d\d) - +(\d+\.\d\d) s  (\S+)\s+confidence (\d\.\d\d)$")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("demo")
    summary = run_demo(work_dir, quick=True, seed=0)
    return work_dir, summary


@pytest.mark.timeout(300)
def test_quick_demo_writes_model_lm_reports_and_summary(first_run):
    work_dir, summary = first_run
    for path in ("exp/model.pt", "exp/config.yaml", "lm/words.3gram.arpa", "lm/lexicon.txt",
                 "eval/greedy/report.html", "eval/lm/report.html", "eval/live/report.html",
                 "summary.json"):  # fmt: skip
        assert (work_dir / path).is_file(), path
    for split in ("train", "val", "test"):
        assert (work_dir / "corpus" / f"{split}.jsonl").read_text().count("\n") > 0
    assert json.loads((work_dir / "summary.json").read_text())["scores"] == summary["scores"]
    assert summary["trained_steps"] == 12
    assert summary["train_seconds"] > 0


def test_quick_demo_reports_error_rates_of_both_decoders_and_live(first_run):
    work_dir, summary = first_run
    assert set(summary["scores"]) == {"greedy", "lm", "live"}  # configs/demo.yaml can stream
    assert summary["live"] == "480 + 160 ms chunks"
    for scores in summary["scores"].values():
        assert scores["cer"] >= 0.0 and scores["wer"] >= 0.0
    # the LM's weights were chosen on val; its test score is reported only if it won there
    tuned = json.loads((work_dir / "lm" / "words.3gram.arpa.tuned.json").read_text())
    assert summary["reported"] == tuned["decoding"] == summary["tuned"]["decoding"]
    assert (tuned["decoding"] == "lm") == (tuned["val_wer"] < tuned["greedy_val_wer"])
    assert summary["wer"] == summary["scores"][summary["reported"]]["wer"]
    # The lexicon-constrained decoder can only output words of the training transcripts.
    lines = Path(summary["lexicon"]).read_text(encoding="utf-8").splitlines()
    lexicon = {line.split("\t")[0] for line in lines}
    example = summary["example"]
    assert set(example["text"].split()) <= lexicon


def test_example_transcript_has_ordered_word_timings_inside_the_file(first_run):
    _, summary = first_run
    example = summary["example"]
    words = example["words"]
    assert example["text"] == " ".join(w["word"] for w in words)
    for w in words:
        assert 0.0 <= w["start"] < w["end"] <= example["duration"] + 1e-6
        assert 0.0 <= w["confidence"] <= 1.0
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)


def test_second_run_reuses_corpus_model_and_lm_and_gives_the_same_result(first_run, capsys):
    work_dir, summary = first_run
    made = ("exp/model.pt", "lm/words.3gram.arpa", "lm/lexicon.txt", "eval/greedy/summary.json",
            "eval/lm/summary.json", "eval/live/summary.json")  # fmt: skip
    mtimes = {path: (work_dir / path).stat().st_mtime_ns for path in made}
    again = run_demo(work_dir, quick=True, seed=0)
    out = capsys.readouterr().out
    # the stages run through asr.recipe.run_stages, as the recipes' do, each reusing its output
    headers = re.findall(r"^== stage (\d): (\w+) - ", out, flags=re.MULTILINE)
    assert headers == [(str(n), name) for n, name in enumerate(STAGES, start=1)]
    assert f"reusing {work_dir / 'corpus'}" in out and "reusing the trained model" in out
    assert f"reusing {work_dir / 'lm' / 'words.3gram.arpa'} and" in out
    assert f"reusing the beam + LM evaluation in {work_dir / 'eval' / 'lm'}" in out
    assert f"reusing the live evaluation in {work_dir / 'eval' / 'live'}" in out
    assert {path: (work_dir / path).stat().st_mtime_ns for path in made} == mtimes
    assert again["scores"] == summary["scores"]
    assert again["example"] == summary["example"]  # (reuse shown by the files, not by timing)


def test_demo_prints_the_transcript_and_its_word_timings(tmp_path, capsys, first_run):
    work_dir, summary = first_run
    run_demo(work_dir, quick=True, seed=0)
    out = capsys.readouterr().out
    assert f"transcript: {summary['example']['text']}" in out
    lines = [WORD_LINE.match(line) for line in out.splitlines()]
    timed = [(float(m[1]), float(m[2]), m[3]) for m in lines if m]
    assert [w for _, _, w in timed] == [w["word"] for w in summary["example"]["words"]]
    assert all(start <= end for start, end, _ in timed)
    assert "test WER" in out and "model:" in out and "report:" in out


def test_same_seed_trains_the_same_weights(first_run, tmp_path):
    work_dir, summary = first_run
    shutil.copytree(work_dir / "corpus", tmp_path / "corpus")  # the corpus has its own tests
    again = run_demo(tmp_path, quick=True, seed=0, lm=False)
    first = torch.load(summary["model"], weights_only=True)["model_state"]
    second = torch.load(again["model"], weights_only=True)["model_state"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again["scores"]["greedy"] == summary["scores"]["greedy"]


def test_the_live_score_is_each_test_file_streamed_and_decoded_as_reported(first_run):
    work_dir, summary = first_run
    import asr
    from asr.data.manifest import read_manifest
    from asr.inference.options import DecodingOptions
    from asr.scoring.tune import best_options

    model = asr.load_model(summary["model"])
    tuned = json.loads((work_dir / "lm" / "words.3gram.arpa.tuned.json").read_text())
    options = best_options(tuned) if summary["reported"] == "lm" else DecodingOptions()
    got = [json.loads(line) for line in (work_dir / "eval/live/transcripts.jsonl").open()]
    for utt, record in zip(read_manifest(work_dir / "corpus" / "test.jsonl"), got, strict=True):
        stream = model.stream(options=options)  # the library's default chunk and look-ahead
        stream.accept(soundfile.read(utt.audio, dtype="float32")[0])
        assert record["text"] == stream.finish().text, utt.id


def test_a_demo_trained_offline_has_no_live_score(first_run, tmp_path):
    work_dir, _ = first_run
    shutil.copytree(work_dir / "corpus", tmp_path / "corpus")
    offline = ["encoder.chunk_conv=false", "encoder.dynamic_chunk_training=false",
               "features.normalize=utterance"]  # fmt: skip
    summary = run_demo(tmp_path, quick=True, seed=0, lm=False, overrides=offline)
    assert set(summary["scores"]) == {"greedy"} and summary["live"] is None

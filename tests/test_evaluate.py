"""Tests for asr/evaluate.py: hand-computed WER/CER, readers, bootstrap, paired comparison."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jiwer
import pytest
import torch

from asr.scoring.evaluate import evaluate_files, format_summary, load_result
from asr.scoring.metrics import (
    ErrorCounts,
    bootstrap_ci,
    count_char_errors,
    count_word_errors,
    paired_bootstrap,
    score,
)
from asr.scoring.report import write_report
from asr.scoring.transcripts import read_transcripts
from asr.text import TextNormalizer

LIBRISPEECH = Path(__file__).resolve().parents[1].parent / "shared/data/librispeech-mini"


def test_deletions_count_against_reference_words():
    counts = count_word_errors("the cat sat on the mat", "the cat sat mat")
    assert counts == ErrorCounts(hits=4, deletions=2, ref_words=6, hyp_words=4)
    assert counts.error_rate == pytest.approx(2 / 6)
    result = score({"u": "the cat sat on the mat"}, {"u": "the cat sat mat"})
    assert result.utterances[0].alignment == [
        ("equal", "the", "the"), ("equal", "cat", "cat"), ("equal", "sat", "sat"),
        ("del", "on", None), ("del", "the", None), ("equal", "mat", "mat"),
    ]  # fmt: skip


def test_substitution_and_insertion_alignment():
    result = score({"u": "a b c"}, {"u": "a x c d"})
    utt = result.utterances[0]
    assert utt.words == ErrorCounts(hits=2, substitutions=1, insertions=1, ref_words=3, hyp_words=4)
    assert utt.alignment == [
        ("equal", "a", "a"), ("sub", "b", "x"), ("equal", "c", "c"), ("ins", None, "d"),
    ]  # fmt: skip
    assert result.wer == pytest.approx(2 / 3)


def test_wer_sums_counts_instead_of_averaging_utterances():
    refs = {"short": "yes", "long": "one two three four five six seven eight nine ten"}
    hyps = {"short": "no", "long": refs["long"]}
    result = score(refs, hyps)
    per_utt_average = sum(u.wer for u in result.utterances) / 2
    assert per_utt_average == pytest.approx(0.5)
    assert result.wer == pytest.approx(1 / 11)
    assert result.sentence_error_rate == pytest.approx(0.5)


def test_empty_reference_and_hypothesis_cases():
    assert count_word_errors("", "") == ErrorCounts()
    assert count_word_errors("", "").error_rate == 0.0
    only_insertions = count_word_errors("", "uh huh")
    assert only_insertions == ErrorCounts(insertions=2, hyp_words=2)
    assert only_insertions.error_rate == 2.0  # each word inserted into silence counts 100%
    assert count_word_errors("a b", "") == ErrorCounts(deletions=2, ref_words=2)
    assert count_char_errors("", "ab") == ErrorCounts(insertions=2, hyp_words=2)
    # Punctuation alone normalizes to an empty reference.
    assert count_word_errors("?!", "") == ErrorCounts()
    silent_set = score({"a": "", "b": ""}, {"a": "", "b": ""})
    assert (silent_set.wer, silent_set.cer, silent_set.wer_ci) == (0.0, 0.0, (0.0, 0.0))
    assert score({}, {}).wer == 0.0


def test_normalization_makes_case_and_punctuation_equal():
    assert count_word_errors("Hello, World!", "hello world").errors == 0
    assert count_word_errors("Hello, World!", "hello world", normalizer=None).errors == 2
    keep_case = TextNormalizer(lowercase=False)
    assert count_word_errors("Hello", "hello", normalizer=keep_case).substitutions == 1
    result = score({"u": "Don't STOP."}, {"u": "don't stop"})
    assert (result.wer, result.utterances[0].reference) == (0.0, "don't stop")


def test_char_errors_count_spaces_like_jiwer_cer():
    counts = count_char_errors("ab c", "abc")
    assert counts == ErrorCounts(hits=3, deletions=1, ref_words=4, hyp_words=3)
    ref, hyp = "the cat sat on the mat", "the bat sat mat"
    assert count_char_errors(ref, hyp).error_rate == pytest.approx(jiwer.cer(ref, hyp))


def test_score_matches_jiwer_on_a_random_corpus():
    rng = random.Random(0)
    vocab = ["a", "b", "c", "d", "e", "f", "g"]
    refs = {f"u{i}": " ".join(rng.choices(vocab, k=rng.randint(1, 12))) for i in range(50)}
    hyps = {k: " ".join(w for w in v.split() if rng.random() > 0.2) + " g" for k, v in refs.items()}
    result = score(refs, hyps)
    ids = sorted(refs)
    expected = jiwer.process_words([refs[i] for i in ids], [hyps[i] for i in ids])
    assert result.wer == pytest.approx(expected.wer)
    assert result.words.substitutions == expected.substitutions
    assert result.words.insertions == expected.insertions


def test_missing_and_extra_ids_are_named():
    with pytest.raises(ValueError) as err:
        score({"a": "x", "b": "y", "c": "z"}, {"a": "x", "d": "w"})
    message = str(err.value)
    assert "2 reference id(s) have no hypothesis: ['b', 'c']" in message
    assert "1 hypothesis id(s) have no reference: ['d']" in message


def test_error_counts_add_and_round_trip_through_tensor():
    a = ErrorCounts(1, 2, 3, 4, 6, 7)
    b = ErrorCounts(10, 0, 1, 0, 11, 10)
    assert a + b == ErrorCounts(11, 2, 4, 4, 17, 17)
    assert sum([a, b]) == a + b
    tensor = a.to_tensor()
    assert tensor.dtype == torch.int64 and tensor.tolist() == [1, 2, 3, 4, 6, 7]
    assert ErrorCounts.from_tensor(tensor + b.to_tensor()) == a + b  # what all_reduce(SUM) does
    with pytest.raises(ValueError, match="shape"):
        ErrorCounts.from_tensor(torch.zeros(3))


def test_kaldi_reader_keeps_empty_text_and_rejects_duplicates(tmp_path):
    path = tmp_path / "text"
    path.write_text("utt1 HELLO world\nutt2\n\nutt3   spaced   out \n")
    assert read_transcripts(path) == {"utt1": "HELLO world", "utt2": "", "utt3": "spaced   out"}
    path.write_text("a one\nb two\na three\n")
    with pytest.raises(ValueError, match=r"text:3: duplicate utterance id 'a' \(first: line 1\)"):
        read_transcripts(path)


def test_jsonl_reader_uses_id_or_audio_stem(tmp_path):
    path = tmp_path / "hyp.jsonl"
    lines = [
        {"id": "x1", "text": "first"},
        {"audio_filepath": "/data/spk/x2.flac", "text": "", "duration": 1.0},
        {"audio": "rel/x3.wav", "text": "third"},
    ]
    path.write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    assert read_transcripts(path) == {"x1": "first", "x2": "", "x3": "third"}
    path.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(ValueError, match="hyp.jsonl:2: duplicate utterance id 'a'"):
        read_transcripts(path)
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r'hyp.jsonl:2: missing or non-string "text"'):
        read_transcripts(path)
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", \n')
    with pytest.raises(ValueError, match="hyp.jsonl:2: not valid JSON"):
        read_transcripts(path)


def test_kaldi_reader_on_librispeech_transcripts():
    trans = LIBRISPEECH / "LibriSpeech/test-clean/1089/134686/1089-134686.trans.txt"
    if not trans.is_file():
        pytest.skip(f"LibriSpeech sample transcripts absent at {trans}")
    texts = read_transcripts(trans)  # this file has no final newline
    assert len(texts) == len([line for line in trans.read_text().splitlines() if line.strip()])
    assert all(k.startswith("1089-134686-") and v == v.strip() for k, v in texts.items())
    last_id, last_text = trans.read_text().splitlines()[-1].split(" ", 1)
    assert texts[last_id] == last_text
    assert score(texts, {k: v.lower() for k, v in texts.items()}).wer == 0.0


def _result_with_errors(num_utts: int, seed: int, error_prob: float = 0.2):
    rng = random.Random(seed)
    refs = {f"u{i:05d}": " ".join(["w"] * rng.randint(3, 15)) for i in range(num_utts)}
    hyps = {
        k: " ".join("x" if rng.random() < error_prob else w for w in v.split())
        for k, v in refs.items()
    }
    return refs, hyps


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_utterances():
    widths = []
    for num_utts in (20, 2000):
        result = score(*_result_with_errors(num_utts, seed=1), num_resamples=1000)
        low, high = result.wer_ci
        assert low <= result.wer <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 4  # width shrinks like 1/sqrt(U): sqrt(100) = 10
    counts = [u.words for u in result.utterances]
    assert bootstrap_ci(counts, 200, seed=3) == bootstrap_ci(counts, 200, seed=3)


def test_paired_bootstrap_finds_strictly_better_system():
    refs, hyps_a = _result_with_errors(100, seed=2, error_prob=0.3)
    # B fixes one error in each utterance that has errors, never adds one.
    hyps_b = {k: v.replace("x", "w", 1) for k, v in hyps_a.items()}
    a, b = score(refs, hyps_a), score(refs, hyps_b)
    cmp = paired_bootstrap(a, b, num_resamples=500)
    assert cmp.prob_b_better == 1.0
    assert cmp.diff_ci[1] < 0 and cmp.mean_diff == pytest.approx(b.wer - a.wer, abs=0.01)
    assert paired_bootstrap(b, a, num_resamples=500).prob_b_better == 0.0


def test_paired_bootstrap_is_even_for_equivalent_systems():
    refs, hyps = _result_with_errors(200, seed=4)
    result = score(refs, hyps)
    same = paired_bootstrap(result, result, num_resamples=300)
    assert (same.prob_b_better, same.mean_diff, same.diff_ci) == (0.5, 0.0, (0.0, 0.0))
    # Same errors, moved to other utterances of the same length: equally good systems.
    ids = sorted(refs)
    shifted = {i: hyps[j] if len(hyps[j].split()) == len(refs[i].split()) else hyps[i]
               for i, j in zip(ids, ids[1:] + ids[:1])}  # fmt: skip
    cmp = paired_bootstrap(result, score(refs, shifted), num_resamples=1000)
    assert 0.1 < cmp.prob_b_better < 0.9 and cmp.diff_ci[0] < 0 < cmp.diff_ci[1]


def test_paired_bootstrap_rejects_different_references():
    a = score({"u": "a b"}, {"u": "a b"})
    with pytest.raises(ValueError, match=r"different normalized references.*\['u'\]"):
        paired_bootstrap(a, score({"u": "a c"}, {"u": "a b"}))
    with pytest.raises(ValueError, match=r"no hypothesis: \['u'\]"):
        paired_bootstrap(a, score({"v": "a b"}, {"v": "a b"}))


def test_evaluate_files_writes_report_and_compares_runs(tmp_path):
    refs = tmp_path / "ref.txt"
    refs.write_text("u1 The cat sat on the mat.\nu2 Hello, World!\nu3 \n")
    old = tmp_path / "old.jsonl"
    old.write_text(
        '{"id": "u1", "text": "the cat sat mat"}\n{"id": "u2", "text": "hello word"}\n'
        '{"id": "u3", "text": "uh"}\n'
    )
    new = tmp_path / "new.txt"
    new.write_text("u1 the cat sat on the mat\nu2 hello world\nu3\n")
    first = evaluate_files(old, refs, output_dir=tmp_path / "old_eval", num_resamples=200)
    assert (first.words.deletions, first.words.substitutions, first.words.insertions) == (2, 1, 1)
    assert first.wer == pytest.approx(4 / 8)
    second = evaluate_files(
        new, refs, output_dir=tmp_path / "new_eval", compare_path=tmp_path / "old_eval",
        num_resamples=200,
    )  # fmt: skip
    assert second.wer == 0.0 and second.comparison.prob_b_better == 1.0
    summary = json.loads((tmp_path / "new_eval/summary.json").read_text())
    assert summary["comparison"]["wer_a"] == pytest.approx(0.5)
    assert "P(better) = 1.000" in format_summary(second)
    page = (tmp_path / "new_eval/report.html").read_text()
    assert "Comparison (paired bootstrap)" in page and "50.00% → 0.00%" in page
    with pytest.raises(ValueError, match="was scored with"):
        evaluate_files(
            new,
            refs,
            compare_path=tmp_path / "old_eval",
            normalizer=TextNormalizer(lowercase=False),
        )
    new.write_text("u1 x\nu9 y\n")
    with pytest.raises(ValueError, match=r"\['u2', 'u3'\].*\['u9'\].*new.txt"):
        evaluate_files(new, refs)


def test_load_result_round_trips_a_written_report(tmp_path):
    refs, hyps = _result_with_errors(30, seed=5)
    result = score(refs, hyps, num_resamples=100)
    evaluate_dir = tmp_path / "eval"
    write_report(result, evaluate_dir)
    loaded = load_result(evaluate_dir / "utterances.jsonl", num_resamples=100)
    assert loaded.utterances == result.utterances
    assert (loaded.words, loaded.chars, loaded.wer_ci) == (
        result.words,
        result.chars,
        result.wer_ci,
    )
    with pytest.raises(FileNotFoundError, match="no utterances.jsonl"):
        load_result(tmp_path / "nowhere")

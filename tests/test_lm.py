"""Tests for asr/lm.py: Kneser-Ney n-grams, ARPA round trip, KenLM loading, lexicons."""

from __future__ import annotations

import math
import random

import pytest
import torch

from asr.corpora.sentences import generate_sentences
from asr.inference.lexicon import write_lexicon
from asr.inference.lm import BOS, EOS, UNK, NgramLM, arpa_words, read_arpa, train_ngram
from asr.tokenizer import CharTokenizer

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat saw the dog",
    "the dog saw a cat on the mat",
    "anna saw the cat",
]


def _grammar_sentences(n: int) -> list[str]:
    return generate_sentences(n, random.Random(0))


def _contexts(lm, order: int) -> list[tuple[str, ...]]:
    """Every context the model has seen (as the history of an n-gram), plus unseen ones."""
    seen = {g[:-1] for g in lm.logprobs if 1 < len(g) <= order}
    return [(), (BOS,), ("never", "seen"), ("the", "zebra"), *sorted(seen)]


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_probabilities_of_every_context_sum_to_one_through_the_arpa_file(tmp_path, order):
    lm = train_ngram(_grammar_sentences(300), order=order)
    arpa = read_arpa(lm.write_arpa(tmp_path / "lm.arpa"))
    assert arpa.order == order
    predictable = [w for w in arpa.vocabulary if w != BOS]
    assert EOS in predictable and UNK in predictable
    for context in _contexts(arpa, order)[:200]:
        total = sum(10 ** arpa.log10_prob(w, context) for w in predictable)
        assert total == pytest.approx(1.0, abs=1e-6), context


def test_arpa_file_round_trips_the_model(tmp_path):
    lm = train_ngram(SENTENCES, order=3)
    back = read_arpa(lm.write_arpa(tmp_path / "lm.arpa"))
    assert back.logprobs.keys() == lm.logprobs.keys()
    for gram, logp in lm.logprobs.items():
        assert back.logprobs[gram] == pytest.approx(logp, abs=1e-6)
    for context, bow in lm.backoffs.items():
        assert back.backoffs[context] == pytest.approx(bow, abs=1e-6)


def test_arpa_header_counts_match_the_sections(tmp_path):
    lm = train_ngram(SENTENCES, order=3)
    text = lm.write_arpa(tmp_path / "lm.arpa").read_text()
    for n in (1, 2, 3):
        declared = int(text.split(f"ngram {n}=")[1].split()[0])
        section = text.split(f"\\{n}-grams:\n")[1].split("\n\n")[0].splitlines()
        assert declared == len(section) == sum(len(g) == n for g in lm.logprobs)


def test_seen_sentence_is_more_likely_than_its_words_scrambled():
    sentences = _grammar_sentences(500)
    lm = train_ngram(sentences, order=3)
    rng = random.Random(1)
    for sentence in sentences[:20]:
        words = sentence.split()
        scrambled = " ".join(rng.sample(words, len(words)))
        if scrambled != sentence:
            assert lm.sentence_log10_prob(sentence) > lm.sentence_log10_prob(scrambled)


def test_kneser_ney_prefers_words_seen_in_many_contexts():
    # "francisco" is frequent but only ever after "san"; "glasses" follows many words.
    sentences = ["san francisco"] * 10 + [f"{w} glasses" for w in ("red", "old", "my", "new")]
    lm = train_ngram(sentences, order=2)
    assert lm.log10_prob("glasses", ["the"]) > lm.log10_prob("francisco", ["the"])
    assert lm.log10_prob("francisco", ["san"]) > lm.log10_prob("glasses", ["san"])


def test_unknown_words_score_as_unk():
    lm = train_ngram(SENTENCES, order=2)
    assert lm.log10_prob("zebra", ["the"]) == lm.log10_prob(UNK, ["the"])
    assert math.isfinite(lm.log10_prob("zebra", ["the"]))


def test_empty_training_text_is_rejected():
    with pytest.raises(ValueError, match="no sentences"):
        train_ngram(["", "  "], order=3)


def test_malformed_arpa_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.arpa"
    path.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0 a b c d\n\\end\\\n")
    with pytest.raises(ValueError, match=r"bad.arpa:5"):
        read_arpa(path)


def test_lexicon_spells_words_for_a_char_tokenizer(tmp_path):
    tokenizer = CharTokenizer.from_texts(SENTENCES)
    skipped = write_lexicon(["cat", "mat", BOS, "zoë"], tokenizer, tmp_path / "lexicon.txt")
    lines = (tmp_path / "lexicon.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["cat", "mat"]
    assert [line.split("\t")[1].split()[:3] for line in lines] == [["c", "a", "t"], ["m", "a", "t"]]
    assert skipped == ["zoë"]


def test_arpa_and_lexicon_load_in_the_flashlight_decoder_and_steer_it(tmp_path):
    from torchaudio.models.decoder import ctc_decoder

    tokenizer = CharTokenizer.from_texts(SENTENCES)
    lm = train_ngram(SENTENCES, order=3)
    arpa = lm.write_arpa(tmp_path / "lm.arpa")
    words = [w for w in lm.vocabulary if w not in (BOS, EOS, UNK)]
    write_lexicon(words, tokenizer, tmp_path / "lexicon.txt")
    tokens = ["<blank>"] + [tokenizer.id_to_piece(i) for i in range(1, tokenizer.vocab_size)]
    decoder = ctc_decoder(
        lexicon=str(tmp_path / "lexicon.txt"), tokens=tokens, lm=str(arpa), beam_size=20,
        lm_weight=1.0, word_score=0.0, blank_token="<blank>", sil_token="|",
    )  # fmt: skip
    # Emissions that spell "the cat sat" but leave the vowel of "cat" ambiguous (a/o): the
    # lexicon has no "cot", so the decoder must output "cat".
    ids = tokenizer.encode("the cat sat")
    emissions = torch.full((1, 2 * len(ids), tokenizer.vocab_size), -10.0)
    for t, i in enumerate(ids):
        emissions[0, 2 * t, i] = 0.0
        emissions[0, 2 * t + 1, 0] = 0.0
    a, o = tokenizer.encode("a")[0], tokenizer.encode("o")[0]
    emissions[0, 2 * 5, a], emissions[0, 2 * 5, o] = -0.8, -0.6  # "o" slightly ahead
    best = decoder(emissions.log_softmax(-1))[0][0]
    assert decoder.idxs_to_tokens(best.tokens).count("|") >= 2
    assert best.words == ["the", "cat", "sat"]


def test_from_ngrams_round_trips_words_and_checks_histories(tmp_path):
    path = NgramLM.from_ngrams({("the",): -0.5, ("cat",): -1.0, ("the", "cat"): -0.2}).write_arpa(
        tmp_path / "lm.arpa"
    )
    assert sorted(arpa_words(path)) == ["cat", "the"]
    text = path.read_text()
    assert "ngram 1=5" in text and "ngram 2=1" in text and "-0.2000000\tthe cat" in text
    with pytest.raises(ValueError, match=r"history \('a',\)"):
        NgramLM.from_ngrams({("a", "b"): -1.0})


def test_a_short_context_is_not_cut_below_its_length():
    # order 5, context of 2 words: all of it counts (a token LM's sentence start)
    lm = train_ngram([["<x>", "t", "h", "e"]] * 3 + [["a", "h"]], order=5)
    assert lm.log10_prob("h", [BOS, "<x>", "t"]) == lm.logprobs[(BOS, "<x>", "t", "h")]
    assert lm.log10_prob("t", [BOS, "<x>"]) == lm.logprobs[(BOS, "<x>", "t")]


def test_token_sequences_are_counted_as_they_are():
    lm = train_ngram([["t", "h", "e", "|", "c", "a", "t"]], order=2)
    assert ("e", "|") in lm.logprobs and ("|", "c") in lm.logprobs  # no normalization

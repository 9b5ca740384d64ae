"""Open-vocabulary decoding: a word absent from the training text can be written by beam search
with the training n-gram interpolated with a background (English) model, and by lexicon-free
beam search with a token n-gram, while the closed lexicon cannot; interpolation is a proper
distribution; the Sphinx trie reader gives pocketsphinx's own probabilities (the shipped
English model, and a model pocketsphinx converts itself); LM tuning works with both decoders.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import soundfile
import torch
from serving_helpers import MODEL, RATE, SENTENCES, speak

from asr.cli.options import add_decoding_arguments, decoding_options
from asr.corpora.sentences import generate_sentences
from asr.data.manifest import Utterance, write_manifest
from asr.inference.decoding import BeamSearchDecoder
from asr.inference.lexicon import LEXICON_FREE, lexicon_for, write_token_lm, write_word_lm
from asr.inference.lm import BOS, NgramLM, arpa_words, interpolate, read_arpa, train_ngram
from asr.inference.options import DecodingOptions
from asr.inference.transcribe import load_model
from asr.scoring.evaluate import decode_and_score
from asr.scoring.tune import LmGrid, load_tuned, tune_lm
from asr.tokenizer import CharTokenizer

TRAIN = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat saw the dog",
    "the dog saw a cat on the mat",
    "anna saw the cat",
]
SPOKEN = "the dot sat"  # "dot": letters of the training text, a word it never uses
BACKGROUND = ["a dot on the map", "the red dot", "one dot and the next dot"]
TOKENIZER = CharTokenizer("abcdefghijklmnopqrstuvwxyz")


def crisp_emissions(text: str, blank_at_separator: float = -8.0) -> torch.Tensor:
    """(1, T, V) log-probs of a confident model saying `text`: each token, then a blank; on
    the frames of "|" the blank gets `blank_at_separator` (other tokens -8)."""
    ids = TOKENIZER.encode(text)
    logits = torch.full((1, 2 * len(ids), TOKENIZER.vocab_size), -8.0)
    for t, i in enumerate(ids):
        logits[0, 2 * t, i] = 0.0
        logits[0, 2 * t + 1, 0] = 0.0
        if i == TOKENIZER.space_id:
            logits[0, 2 * t, 0] = blank_at_separator
    return logits.log_softmax(-1)


def decode(options: DecodingOptions, text: str = SPOKEN, blank_at_separator=-8.0) -> str:
    emissions = crisp_emissions(text, blank_at_separator)
    ids = BeamSearchDecoder(TOKENIZER, options)(emissions, torch.tensor([emissions.shape[1]]))
    return TOKENIZER.decode(ids[0])


def test_closed_lexicon_cannot_write_an_unseen_word_and_both_open_decoders_do(tmp_path):
    arpa, lexicon = tmp_path / "closed.arpa", tmp_path / "closed.txt"
    write_word_lm(TRAIN, TOKENIZER, arpa, lexicon)
    closed = decode(DecodingOptions(lm=str(arpa), lexicon=str(lexicon)))
    assert "dot" not in closed.split() and closed.split()[::2] == ["the", "sat"]

    background = train_ngram(BACKGROUND)
    mixed, mixed_lexicon = tmp_path / "mixed.arpa", tmp_path / "mixed.txt"
    _, words, _ = write_word_lm(TRAIN, TOKENIZER, mixed, mixed_lexicon, 3, background, 0.7)
    assert {"dot", "mat", "map"} <= set(words)
    assert decode(DecodingOptions(lm=str(mixed), lexicon=str(mixed_lexicon))) == SPOKEN

    tokens = tmp_path / "tokens.arpa"
    write_token_lm(TRAIN, TOKENIZER, tokens, order=4)
    assert "|" in arpa_words(tokens) and "dot" not in arpa_words(tokens)
    assert decode(DecodingOptions(lm=str(tokens), lexicon=LEXICON_FREE)) == SPOKEN


def test_lexicon_free_decoder_scores_each_token_as_the_token_lm_does(tmp_path):
    # torchaudio maps token ids to LM words through an unordered map: without the LM
    # dictionary the decoder gives each token another token's probability.
    tokens = tmp_path / "tokens.arpa"
    lm = write_token_lm(TRAIN, TOKENIZER, tokens, order=4)
    decoder = BeamSearchDecoder(TOKENIZER, DecodingOptions(lm=str(tokens), lexicon=LEXICON_FREE))
    for text in ("the cat sat", "a dot", "zebra"):
        state, pieces = decoder.loaded_lm.start(False), ["<s>"]
        for i in TOKENIZER.encode(text):
            state, score = decoder.loaded_lm.score(state, i)  # flashlight's KenLM: log10
            piece = TOKENIZER.id_to_piece(i)
            assert score == pytest.approx(lm.log10_prob(piece, pieces), abs=1e-5), (text, piece)
            pieces.append(piece)
    with pytest.raises(ValueError, match="up to order 6, not 7"):
        write_token_lm(TRAIN, TOKENIZER, tmp_path / "seven.arpa", order=7)


def test_lexicon_free_word_score_is_paid_per_word_separator(tmp_path):
    tokens = tmp_path / "tokens.arpa"
    write_token_lm(TRAIN, TOKENIZER, tokens, order=4)
    free = DecodingOptions(lm=str(tokens), lexicon=LEXICON_FREE, lm_weight=0.0)
    assert decode(free, blank_at_separator=-3.0) == SPOKEN
    # A word score of -4 per frame of "|" makes the blank there (3 below "|") the better path:
    # the separators are dropped, and with them the words.
    penalized = dataclasses.replace(free, word_score=-4.0)
    assert decode(penalized, blank_at_separator=-3.0) == "thedotsat"
    assert decode(dataclasses.replace(free, word_score=-2.0), blank_at_separator=-3.0) == SPOKEN


def test_lexicon_free_refuses_a_word_lm_and_is_a_flag(tmp_path):
    words = train_ngram(TRAIN).write_arpa(tmp_path / "words.arpa")
    with pytest.raises(ValueError, match=r"words.arpa holds only \d+ of its 27 tokens"):
        lexicon_for(TOKENIZER, str(words), LEXICON_FREE)
    import argparse

    parser = argparse.ArgumentParser()
    add_decoding_arguments(parser)
    options = decoding_options(parser.parse_args(["--lm", str(words), "--lexicon", "none"]))
    assert options.lexicon == LEXICON_FREE and options.beam_size > 1 and not options.greedy
    with pytest.raises(ValueError, match="lexicon file not found: nothere"):
        DecodingOptions(lexicon="nothere")


def test_token_lm_spells_sentences_with_the_separator_between_words(tmp_path):
    lm = write_token_lm(["the cat"], TOKENIZER, tmp_path / "t.arpa", order=3)
    tokens = ["<s>", "t", "h", "e", "|", "c", "a", "t", "</s>"]
    assert {g for g in lm.logprobs if len(g) == 3} == set(zip(tokens, tokens[1:], tokens[2:]))
    assert read_arpa(tmp_path / "t.arpa").logprobs == pytest.approx(lm.logprobs, abs=1e-6)


def _contexts(lm: NgramLM) -> list[tuple[str, ...]]:
    seen = sorted({g[:-1] for g in lm.logprobs if len(g) > 1})
    return [(), ("never", "seen"), ("the", "zebra"), *seen[:: max(1, len(seen) // 40)]]


def test_interpolation_is_a_proper_distribution_with_the_mixture_on_seen_ngrams():
    a = train_ngram(generate_sentences(300, random.Random(0)), 3)
    b = train_ngram([*BACKGROUND, "zebras eat melons"], 2)
    mixed = interpolate([a, b], [0.7, 0.3])
    vocabulary = [w for w in mixed.vocabulary if w != BOS]
    assert set(vocabulary) == (set(a.vocabulary) | set(b.vocabulary)) - {BOS}
    for context in _contexts(mixed):
        total = sum(10 ** mixed.log10_prob(w, context) for w in vocabulary)
        assert total == pytest.approx(1.0, abs=1e-9), context

    def p(lm: NgramLM, gram: tuple[str, ...]) -> float:
        return 10 ** lm.log10_prob(gram[-1], gram[:-1]) if (gram[-1],) in lm.logprobs else 0.0

    for gram in list(mixed.logprobs)[::7]:
        if gram[-1] != BOS:
            expected = 0.7 * p(a, gram) + 0.3 * p(b, gram)
            assert 10 ** mixed.logprobs[gram] == pytest.approx(expected, rel=1e-9), gram


def test_renormalizing_a_normalized_model_changes_nothing():
    lm = train_ngram(generate_sentences(200, random.Random(1)), 3)
    same = interpolate([lm], [1.0])
    assert same.logprobs.keys() == lm.logprobs.keys()
    for gram, logp in lm.logprobs.items():
        assert same.logprobs[gram] == pytest.approx(logp, abs=1e-9)
        assert same.backoffs.get(gram, 0.0) == pytest.approx(lm.backoffs.get(gram, 0.0), abs=1e-9)


def test_interpolation_weights_are_checked():
    lm = train_ngram(TRAIN)
    with pytest.raises(ValueError, match="sum to 1"):
        interpolate([lm, lm], [0.5, 0.6])
    with pytest.raises(ValueError, match="one weight per model"):
        interpolate([lm], [0.5, 0.5])


# pocketsphinx: the English model and its own converter (`pip install 'asr[english]'`).


@pytest.fixture(scope="module")
def pocketsphinx():
    return pytest.importorskip("pocketsphinx", reason="the 'english' extra is not installed")


def _sphinx_log10(model, gram: tuple[str, ...]) -> float:
    """pocketsphinx's own log10 p(gram[-1] | gram[:-1]) (`NGramModel.prob` takes the word,
    then its history newest first, and answers in its integer log base 1.0001)."""
    from asr.inference.english import LOG10_PER_UNIT

    return model.prob([gram[-1], *reversed(gram[:-1])]) * LOG10_PER_UNIT


def test_a_model_pocketsphinx_converts_reads_back_with_its_probabilities(pocketsphinx, tmp_path):
    from asr.inference.english import read_sphinx_lm

    lm = train_ngram(generate_sentences(300, random.Random(0)), 3)
    lm.write_arpa(tmp_path / "lm.arpa")
    config, logmath = pocketsphinx.Config(), pocketsphinx.LogMath()
    writer = pocketsphinx.NGramModel(config, logmath, str(tmp_path / "lm.arpa"))
    writer.write(str(tmp_path / "lm.bin"), pocketsphinx.NGramModel.str_to_type("bin"))
    del writer  # closes the file
    back = read_sphinx_lm(tmp_path / "lm.bin")
    assert back.logprobs.keys() == lm.logprobs.keys()
    # 16-bit quantization above unigrams, float32 unigrams
    for gram, logp in lm.logprobs.items():
        assert back.logprobs[gram] == pytest.approx(logp, abs=1e-4), gram
        assert back.backoffs.get(gram, 0.0) == pytest.approx(lm.backoffs.get(gram, 0.0), abs=1e-4)
    sphinx = pocketsphinx.NGramModel(config, logmath, str(tmp_path / "lm.bin"))
    queries = [*[g for g in lm.logprobs if g[-1] != BOS][::50], ("the", "fox", "oscar")]
    for gram in queries:
        ours = back.log10_prob(gram[-1], gram[:-1])
        assert ours == pytest.approx(_sphinx_log10(sphinx, gram), abs=1e-4), gram


@pytest.fixture(scope="module")
def english(pocketsphinx):
    from asr.inference.english import read_sphinx_lm, sphinx_lm_path

    return read_sphinx_lm(sphinx_lm_path())


def test_the_shipped_english_model_reads_with_pocketsphinx_scores_and_sums_to_one(
    pocketsphinx, english
):
    from asr.inference.english import sphinx_lm_path

    counts = [sum(len(g) == n for g in english.logprobs) for n in (1, 2, 3)]
    assert counts == [72548, 2051541, 1669625]  # 72,547 words and the <unk> added
    sphinx = pocketsphinx.NGramModel(
        pocketsphinx.Config(), pocketsphinx.LogMath(), str(sphinx_lm_path())
    )
    seen = [("one", "of", "the"), ("of", "the"), ("shaka", "zulu"), ("the",), ("of", "the", "cat")]
    backed_off = [("purple", "the", "dog"), ("zulu", "xylophone"), ("the", "world", "</s>")]
    for gram in seen + backed_off:
        ours = english.log10_prob(gram[-1], gram[:-1])
        assert ours == pytest.approx(_sphinx_log10(sphinx, gram), abs=2e-4), gram
    vocabulary = [w for w in english.vocabulary if w != BOS]
    for context in [(), ("the",), ("of", "the"), ("<s>",), ("purple", "cat")]:
        total = sum(10 ** english.log10_prob(w, context) for w in vocabulary)
        assert total == pytest.approx(1.0, abs=1e-3), context  # stored, quantized backoffs


def test_english_sentences_follow_the_word_frequencies(english):
    from asr.inference.english import english_sentences

    sentences = english_sentences(english, 20_000, keep=["the", "of", "zebra", "xylophone"])
    running = [w for s in sentences for w in s]
    assert set(running) == {"the", "of", "zebra", "xylophone"}
    ratio = running.count("the") / running.count("of")
    expected = 10 ** (english.logprobs[("the",)] - english.logprobs[("of",)])
    assert ratio == pytest.approx(expected, rel=0.01)


@pytest.mark.slow
def test_english_lm_writes_words_the_training_text_never_had(pocketsphinx, tmp_path):
    from asr.inference.english import english_word_lm

    arpa = english_word_lm(tmp_path)
    assert english_word_lm(tmp_path) == arpa  # converted once
    words = set(arpa_words(arpa))
    assert "xylophone" in words and "xylophone" not in " ".join(TRAIN)
    lexicon = lexicon_for(TOKENIZER, str(arpa), None)
    assert lexicon is not None and lexicon["xylophone"] == [list("xylophone")]
    text = "the xylophone sat"
    options = DecodingOptions(lm=str(arpa), lm_weight=0.5)
    assert decode(options, text) == text


# Tuning (asr.scoring.tune) with the open decoders, on the shipped model and eSpeak NG speech.


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    folder = tmp_path_factory.mktemp("val")
    utterances = []
    for i, text in enumerate(SENTENCES[:3]):
        wave = speak([text], pause=0.2)
        soundfile.write(folder / f"u{i}.wav", wave, RATE)
        utterances.append(Utterance(f"u{i}", str(folder / f"u{i}.wav"), text, len(wave) / RATE))
    write_manifest(utterances, folder / "val.jsonl")
    return folder / "val.jsonl"


@pytest.mark.parametrize("kind", ["tokens", "interpolated"])
def test_tuning_works_with_the_open_decoders(kind, val, tmp_path):
    model = load_model(MODEL, "cpu")
    tokenizer = model.bundle.tokenizer
    texts = [s for s in SENTENCES[3:]]  # the validation sentences are not in the LM's text
    if kind == "tokens":
        arpa = tmp_path / "tokens.arpa"
        write_token_lm(texts, tokenizer, arpa, order=5, background=[s.split() for s in SENTENCES])
        options = DecodingOptions(lm=str(arpa), lexicon=LEXICON_FREE, beam_size=8)
    else:
        arpa, lexicon = tmp_path / "mixed.arpa", tmp_path / "mixed.txt"
        write_word_lm(texts, tokenizer, arpa, lexicon, 3, train_ngram(SENTENCES), 0.5)
        options = DecodingOptions(lm=str(arpa), lexicon=str(lexicon), beam_size=8)
    grid = LmGrid(lm_weights=(0.5, 2.0), word_scores=(-1.0, 1.0), extend=0)
    found = tune_lm(model, val, options, grid)
    best = found.best
    alone = decode_and_score(model, val, tmp_path / "best", dataclasses.replace(
        options, lm_weight=best.lm_weight, word_score=best.word_score), report=False,
        num_resamples=1)  # fmt: skip
    assert alone.words == best.errors and len(found.points) == 4
    # The background text holds the validation sentences: each open LM beats greedy there.
    assert found.lm_beats_greedy and best.wer < found.greedy.error_rate
    tuned = found.write(tmp_path / "tuned.json")
    assert load_tuned(tuned) == found.chosen and found.chosen.lexicon == options.lexicon


def test_the_unigram_reader_gives_the_full_readers_word_probabilities(english):
    from asr.inference.english import read_sphinx_unigrams, sphinx_lm_path

    unigrams = read_sphinx_unigrams(sphinx_lm_path())
    full = {g[0]: p for g, p in english.logprobs.items() if len(g) == 1}
    del full["<unk>"]  # added by read_sphinx_lm, not stored in the file
    assert unigrams == full


def test_an_english_tokenizer_needs_no_transcripts_and_spells_any_english_word(
    pocketsphinx, tmp_path
):
    """`tokenizer.text: english`: subword units learned from general English, with no training
    manifest at all; frequent words become single units, rare and unseen ones split into pieces
    that spell them back exactly."""
    from asr.config import TokenizerConfig, TrainConfig
    from asr.training.train import prepare_tokenizer

    config = TrainConfig(tokenizer=TokenizerConfig(kind="unigram", vocab_size=256, text="english"))
    tokenizer = prepare_tokenizer(config, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()  # reused by a resumed run
    assert tokenizer.vocab_size == 256
    for word in ("the", "and", "of"):
        assert len(tokenizer.encode(word)) == 1, word
    text = "a xylophone quietly serenaded the bewildered octopus"
    ids = tokenizer.encode(text)
    assert tokenizer.unknown_chars(text) == [] and tokenizer.decode(ids) == text
    assert len(ids) < len(text.replace(" ", ""))  # pieces, not letters

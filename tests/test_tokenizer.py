"""Tests for asr/tokenizer.py: round trips, the blank at id 0, serialization, unknown characters."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.config import TokenizerConfig
from asr.text import normalize_text
from asr.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)

CORPUS = [
    "HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS",
    "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
    "AFTER EARLY NIGHTFALL THE YELLOW LAMPS WOULD LIGHT UP HERE AND THERE",
    "the squalid quarter of the brothels",
    "Hello, world! Don't panic.",
    "speech recognition with connectionist temporal classification",
    "a quick brown fox jumps over the lazy dog",
    "zebras vex jolly quick wizards",
] * 4

HELD_OUT = [
    "the yellow lamps would light up",
    "hello there",
    "don't stew the carrots",
    "quick wizards jump",
    "a",
]


@pytest.fixture(scope="module")
def char_tok() -> CharTokenizer:
    return train_tokenizer(CORPUS, TokenizerConfig(kind="char"))


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def sp_tok(request) -> SentencePieceTokenizer:
    return train_tokenizer(CORPUS, TokenizerConfig(kind=request.param, vocab_size=40))


def test_char_tokenizer_reserves_blank_and_space(char_tok):
    assert char_tok.blank_id == 0
    assert char_tok.id_to_piece(0) == "<blank>"
    assert char_tok.id_to_piece(1) == "|"
    assert char_tok.encode("a b") == [char_tok.encode("a")[0], 1, char_tok.encode("b")[0]]
    # 26 letters, the apostrophe, the space and the blank
    assert char_tok.vocab_size == 29


def test_char_tokenizer_round_trips_normalized_text(char_tok):
    for text in [*CORPUS, *HELD_OUT]:
        assert char_tok.decode(char_tok.encode(text)) == normalize_text(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz' ", max_size=60))
def test_char_tokenizer_round_trip_property(text):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    ids = tok.encode(text)
    assert 0 not in ids
    assert len(ids) == len(normalize_text(text))
    assert tok.decode(ids) == normalize_text(text)


def test_char_tokenizer_reports_unknown_characters_by_name(char_tok):
    assert char_tok.unknown_chars("héllo 7 wörld") == ["7", "é", "ö"]
    with pytest.raises(ValueError, match=r"\['7', 'é', 'ö'\]"):
        char_tok.encode("héllo 7 wörld")


def test_skip_unknown_drops_only_the_unknown_characters(char_tok):
    ids = char_tok.encode("héllo 7 wörld", skip_unknown=True)
    assert char_tok.decode(ids) == "hllo wrld"


def test_decode_never_emits_blank_and_rejects_out_of_range_ids(char_tok):
    ids = char_tok.encode("hello")
    assert char_tok.decode([0, *ids, 0]) == "hello"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        char_tok.decode([char_tok.vocab_size])


def test_char_tokenizer_from_texts_without_characters_fails():
    with pytest.raises(ValueError, match="no characters"):
        train_tokenizer(["", "  ", "!!"], TokenizerConfig(kind="char"))


def test_sentencepiece_round_trips_and_never_encodes_blank(sp_tok):
    assert sp_tok.blank_id == 0
    assert sp_tok.id_to_piece(0) == "<blank>"
    for text in [*CORPUS, *HELD_OUT]:
        ids = sp_tok.encode(text)
        assert ids and 0 not in ids
        assert sp_tok.decode(ids) == normalize_text(text)
        assert sp_tok.decode([0, *ids, 0]) == normalize_text(text)


def test_sentencepiece_vocab_size_counts_blank(sp_tok):
    assert sp_tok.vocab_size == 40
    assert max(max(sp_tok.encode(t)) for t in CORPUS) < 40


def test_sentencepiece_merges_pieces(sp_tok):
    text = "the yellow lamps would light up here and there"
    assert len(sp_tok.encode(text)) < len(normalize_text(text))


def test_sentencepiece_reports_unknown_characters(sp_tok):
    assert sp_tok.unknown_chars("the 9 ñ") == ["9", "ñ"]
    with pytest.raises(ValueError, match=r"\['9', 'ñ'\]"):
        sp_tok.encode("the 9 ñ")
    assert sp_tok.decode(sp_tok.encode("the 9 ñ", skip_unknown=True)) == "the"


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_vocab_size_too_large_names_the_maximum(kind):
    with pytest.raises(ValueError, match=r"too large.*the most .* is \d+"):
        train_tokenizer(CORPUS[:3], TokenizerConfig(kind=kind, vocab_size=5000))


def test_vocab_size_smaller_than_alphabet_is_explained():
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(CORPUS, TokenizerConfig(kind="bpe", vocab_size=10))


def _all_tokenizers(char_tok, sp_tok):
    return [char_tok, sp_tok]


def test_to_dict_round_trip_gives_identical_encodings(char_tok, sp_tok):
    for tok in _all_tokenizers(char_tok, sp_tok):
        copy = tokenizer_from_dict(tok.to_dict())
        assert type(copy) is type(tok) and copy.vocab_size == tok.vocab_size
        for text in HELD_OUT:
            assert copy.encode(text) == tok.encode(text)
        assert [copy.id_to_piece(i) for i in range(copy.vocab_size)] == [
            tok.id_to_piece(i) for i in range(tok.vocab_size)
        ]


def test_to_dict_survives_torch_load_weights_only(char_tok, sp_tok):
    buffer = io.BytesIO()
    torch.save({"tokenizers": [t.to_dict() for t in (char_tok, sp_tok)]}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["tokenizers"]
    for tok, d in zip((char_tok, sp_tok), loaded):
        copy = tokenizer_from_dict(d)
        assert [copy.encode(t) for t in HELD_OUT] == [tok.encode(t) for t in HELD_OUT]


def test_save_and_load_json(tmp_path, char_tok, sp_tok):
    for i, tok in enumerate(_all_tokenizers(char_tok, sp_tok)):
        path = tmp_path / f"tok{i}.json"
        tok.save(path)
        copy = load_tokenizer(path)
        assert copy.kind == tok.kind
        assert [copy.encode(t) for t in HELD_OUT] == [tok.encode(t) for t in HELD_OUT]


def test_load_tokenizer_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "words"}')
    with pytest.raises(ValueError, match=r"bad\.json.*'words'"):
        load_tokenizer(bad)

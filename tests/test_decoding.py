"""Tests for asr/decoding.py: greedy and beam search against brute force, the n-gram LM and the
lexicon, and word timings from the forced alignment."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from asr.cli.options import decoding_options
from asr.config import TokenizerConfig
from asr.inference.alignment import align_words, split_words
from asr.inference.decoding import BeamSearchDecoder, greedy_decode, make_decoder
from asr.inference.decoding import collapse as ctc_collapse
from asr.inference.lexicon import read_lexicon, spell_word
from asr.inference.lm import NgramLM
from asr.inference.options import DEFAULT_LM_BEAM, DecodingOptions
from asr.tokenizer import CharTokenizer, train_tokenizer

TOK = CharTokenizer("thecap")  # ids: 0 blank, 1 space "|", a c e h p t = 2..7


def posteriors(rows: list, vocab_size: int = TOK.vocab_size) -> torch.Tensor:
    """log_probs (1, T, V) from rows: a piece ("_" blank) at 0.9, or a dict {id: prob}; the rest
    of each frame's mass is spread evenly over the other ids."""
    frames = []
    for row in rows:
        if isinstance(row, str):
            row = {0 if row == "_" else 1 if row == "|" else TOK.encode(row)[0]: 0.9}
        rest = (1.0 - sum(row.values())) / (vocab_size - len(row))
        frames.append([row.get(i, rest) for i in range(vocab_size)])
    return torch.tensor(frames).log()[None]


def collapse(path: list[int]) -> list[int]:
    return [label for label, _ in itertools.groupby(path) if label != 0]


def labelling_probabilities(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Brute force: P(labelling) summed over every alignment of a (T, V) posterior."""
    T, V = log_probs.shape
    probs: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=T):
        p = math.exp(sum(log_probs[t, path[t]].item() for t in range(T)))
        key = tuple(collapse(list(path)))
        probs[key] = probs.get(key, 0.0) + p
    return probs


def test_greedy_collapses_repeats_and_drops_blanks():
    log_probs = posteriors([*"tt_h|e_ecc", "a", "a", "_", "t"])
    [ids] = greedy_decode(log_probs, torch.tensor([log_probs.shape[1]]))
    assert TOK.decode(ids) == "th eecat"


def test_greedy_equals_collapse_of_argmax_path_and_ignores_padding():
    gen = torch.Generator().manual_seed(0)
    log_probs = (3 * torch.randn(4, 12, 5, generator=gen)).log_softmax(-1)  # (B, T, V)
    out_lengths = torch.tensor([12, 7, 1, 0])
    decoded = greedy_decode(log_probs, out_lengths)
    for b in range(4):
        path = log_probs[b, : out_lengths[b]].argmax(-1).tolist()
        assert decoded[b] == collapse(path)
    assert decoded[3] == []
    padded = log_probs.clone()
    padded[1, 7:] = torch.randn(5, 5).log_softmax(-1)  # garbage past the length
    assert greedy_decode(padded, out_lengths) == decoded


def test_beam_search_finds_the_most_probable_labelling():
    gen = torch.Generator().manual_seed(1)
    tok, greedy_was_wrong = CharTokenizer("ab"), 0  # V = 4
    decoder = BeamSearchDecoder(tok, DecodingOptions(beam_size=500, beam_threshold=1000))
    for _ in range(8):
        log_probs = (1.5 * torch.randn(1, 5, 4, generator=gen)).log_softmax(-1)
        probs = labelling_probabilities(log_probs[0])
        best = max(probs, key=probs.get)
        [beam] = decoder(log_probs, torch.tensor([5]))
        [greedy] = greedy_decode(log_probs, torch.tensor([5]))
        assert probs[tuple(beam)] == pytest.approx(probs[best], rel=1e-5)
        assert probs[tuple(beam)] >= probs[tuple(greedy)] * (1 - 1e-6)
        greedy_was_wrong += probs[tuple(greedy)] < probs[best] * (1 - 1e-6)
    assert greedy_was_wrong >= 1  # the cases really tell beam search from greedy


def test_token_beam_of_one_is_greedy_and_of_the_whole_vocabulary_changes_nothing():
    """`beam_size_token` k tries the k most likely tokens per frame: 1 follows the best path
    (greedy), the vocabulary size tries them all (the default), on posteriors where the full
    search finds a labelling greedy decoding misses."""
    gen = torch.Generator().manual_seed(1)
    tok, differ = CharTokenizer("ab"), 0  # V = 4
    options = DecodingOptions(beam_size=500, beam_threshold=1000)
    full = BeamSearchDecoder(tok, options)
    every = BeamSearchDecoder(tok, dataclasses.replace(options, beam_size_token=tok.vocab_size))
    one = BeamSearchDecoder(tok, dataclasses.replace(options, beam_size_token=1))
    for _ in range(8):
        log_probs = (1.5 * torch.randn(1, 5, 4, generator=gen)).log_softmax(-1)
        lengths = torch.tensor([5])
        assert every(log_probs, lengths) == full(log_probs, lengths)
        assert one(log_probs, lengths) == greedy_decode(log_probs, lengths)
        differ += full(log_probs, lengths) != one(log_probs, lengths)
    assert differ >= 1  # the token beam really narrowed the search
    with pytest.raises(ValueError, match="beam_size_token"):
        DecodingOptions(beam_size=4, beam_size_token=0)


def test_beam_search_on_sentencepiece_matches_greedy_on_peaky_posteriors():
    sp = train_tokenizer(
        ["the cat sat on the mat", "a cap for the cat", "hello world the end"] * 5,
        TokenizerConfig(kind="unigram", vocab_size=24),
    )
    ids = sp.encode("the cat the end")
    rows = [r for i in ids for r in ({i: 0.95}, {0: 0.95})]
    log_probs = posteriors(rows, sp.vocab_size)
    decoder = make_decoder(sp, DecodingOptions(beam_size=8))
    assert decoder(log_probs, torch.tensor([len(rows)])) == [ids]
    assert [sp.decode(w) for w in split_words(ids, sp)] == ["the", "cat", "the", "end"]


def test_language_model_decides_between_acoustically_tied_words(tmp_path):
    tie = {TOK.encode("t")[0]: 0.45, TOK.encode("p")[0]: 0.45}
    log_probs = posteriors([*"the|ca", tie, "_"])  # "the cat" and "the cap" equally likely
    lengths = torch.tensor([log_probs.shape[1]])
    chosen = {}
    for favoured, other in (("cat", "cap"), ("cap", "cat")):
        lm = tmp_path / f"{favoured}.arpa"
        NgramLM.from_ngrams({("the",): -1.0, ("cat",): -1.0, ("cap",): -1.0,
                             ("the", favoured): -0.1, ("the", other): -2.0}).write_arpa(lm)  # fmt: skip
        decoder = make_decoder(TOK, DecodingOptions(beam_size=10, lm=str(lm)))
        chosen[favoured] = TOK.decode(decoder(log_probs, lengths)[0]).strip()
    assert chosen == {"cat": "the cat", "cap": "the cap"}


def test_lexicon_restricts_output_to_its_words(tmp_path):
    log_probs = posteriors([*"the|c", "e", "t"])  # acoustically "the cet"
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("the\ncat c a t\n")  # a spelled-out line and a bare word
    decoder = make_decoder(TOK, DecodingOptions(lexicon=str(lexicon), beam_size=10))
    assert TOK.decode(decoder(log_probs, torch.tensor([7]))[0]).strip() == "the cat"
    free = make_decoder(TOK, DecodingOptions(beam_size=10))
    assert TOK.decode(free(log_probs, torch.tensor([7]))[0]).strip() == "the cet"


def test_lexicon_decoding_keeps_words_apart_without_a_separator(tmp_path):
    log_probs = posteriors([*"the_cat"])  # no "|" between the words: the lexicon still splits
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("the\ncat\n")
    decoder = make_decoder(TOK, DecodingOptions(lexicon=str(lexicon), beam_size=10))
    ids = decoder(log_probs, torch.tensor([7]))[0]
    assert ids == TOK.encode("the cat") and len(split_words(ids, TOK)) == 2


def test_lexicon_with_unknown_tokens_names_file_and_line(tmp_path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("the t h e |\ncat c a x |\n")
    with pytest.raises(ValueError, match=r"lexicon\.txt:2: .*'cat'.*\['x'\]"):
        read_lexicon(lexicon, TOK)
    assert spell_word("cat", TOK) == ["c", "a", "t"]
    assert spell_word("dog", TOK) is None  # letters the model cannot write


def test_binary_lm_without_lexicon_is_refused_with_a_clear_message(tmp_path):
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\x00\x01")
    with pytest.raises(ValueError, match=r"lm\.bin needs a lexicon"):
        make_decoder(TOK, DecodingOptions(lm=str(binary)))
    with pytest.raises(ValueError, match="lm file not found"):
        DecodingOptions(lm=str(tmp_path / "missing.arpa"))


def test_word_timings_follow_the_alignment():
    rows = ["t", "t", "h", "e", "_", "|", "_", "_", "c", "a", "_", "t", "t"]
    log_probs = posteriors(rows)[0]  # (T, V)
    words = align_words(log_probs, TOK.encode("the cat"), TOK, frame_seconds=0.04, offset=10.0)
    assert [w.word for w in words] == ["the", "cat"]
    assert [(w.start, w.end) for w in words] == [
        pytest.approx((10.0, 10.16)),  # frames 0-3
        pytest.approx((10.32, 10.52)),  # frames 8-12
    ]
    # every aligned frame of both words has posterior 0.9: the geometric mean is 0.9
    assert [w.confidence for w in words] == [pytest.approx(0.9), pytest.approx(0.9)]


def test_word_confidence_is_the_geometric_mean_of_aligned_posteriors():
    t, h = TOK.encode("t")[0], TOK.encode("h")[0]
    log_probs = posteriors([{t: 0.8}, {t: 0.5}, {h: 0.9}])[0]
    [word] = align_words(log_probs, [t, h], TOK, frame_seconds=0.04)
    assert word.confidence == pytest.approx((0.8 * 0.5 * 0.9) ** (1 / 3))


def test_word_timings_survive_a_separator_the_model_never_emitted():
    log_probs = posteriors(list("thecat"))[0]  # no frame for the "|" a beam search may add
    words = align_words(log_probs, TOK.encode("the cat"), TOK, frame_seconds=1.0)
    assert [(w.word, w.start, w.end) for w in words] == [("the", 0, 3), ("cat", 3, 6)]


def test_beam_size_defaults_to_greedy_without_lm_and_to_a_beam_with_one(tmp_path):
    lm = tmp_path / "lm.arpa"
    NgramLM.from_ngrams({("the",): -1.0}).write_arpa(lm)
    assert DecodingOptions().greedy and DecodingOptions().beam_size == 1
    with_lm = DecodingOptions(lm=str(lm))
    assert not with_lm.greedy and with_lm.beam_size == DEFAULT_LM_BEAM > 1
    assert DecodingOptions(lm=str(lm), beam_size=3).beam_size == 3
    assert not DecodingOptions(beam_size=4).greedy


@pytest.mark.parametrize("command", ["transcribe", "evaluate"])
def test_every_decoding_option_is_a_flag_with_the_same_default(command):
    from asr.cli import build_parser

    parser = build_parser()
    args = parser.parse_args([command, "--model", "m.pt"])
    assert decoding_options(args) == DecodingOptions()
    changed = {"beam_size": 7, "lm_weight": 0.25, "word_score": -1.5, "beam_threshold": 12.0,
               "log_add": False}  # fmt: skip
    argv = [command, "--model", "m.pt", "--beam-size", "7", "--lm-weight", "0.25",
            "--word-score=-1.5", "--beam-threshold", "12", "--no-log-add"]  # fmt: skip
    assert decoding_options(parser.parse_args(argv)) == DecodingOptions(**changed)
    names = {f.name for f in dataclasses.fields(DecodingOptions)}
    assert names <= set(vars(args)), names - set(vars(args))


@given(st.lists(st.integers(0, 3), max_size=30), st.integers(0, 30))
def test_a_path_cut_anywhere_collapses_as_the_whole(path, cut):
    """Streaming collapses chunk by chunk, carrying the last label: the same tokens."""
    cut = min(cut, len(path))
    head, tail = path[:cut], path[cut:]
    previous = head[-1] if head else 0
    assert ctc_collapse(head) + ctc_collapse(tail, previous=previous) == ctc_collapse(path)
    assert ctc_collapse(path) == collapse(path)  # the brute-force reference above

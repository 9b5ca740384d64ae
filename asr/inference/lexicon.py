"""Lexicons for lexicon-constrained CTC beam search: words and their token spellings.

A lexicon file holds `word<TAB>piece piece ...` lines (or bare `word` lines, spelled with the
model's tokenizer). Characters spell a word letter by letter; the "|" between words is the
decoder's optional silence token and is never part of a spelling. SentencePiece spells a word
with its pieces, the first one starting with "▁".

Here: `spell_word`, `write_lexicon` (words -> file, for a model's tokenizer), `read_lexicon`
(file -> spellings checked against the tokenizer), `write_spellings` (the one writer of the
line format), `lexicon_for` (the lexicon a decoder uses: a file, an ARPA model's words, or none
at all: `LEXICON_FREE`), `write_word_lm` (a word n-gram of transcripts, optionally interpolated
with a general English model, with the lexicon of its words: the LM stage of the demo, the AN4
recipe and bench/real_speech.py) and `write_token_lm` (an n-gram over the model's own tokens, "|"
between words, for lexicon-free beam search: any spelling can be written).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from asr.inference.lm import (
    BOS,
    EOS,
    KENLM_MAX_ORDER,
    UNK,
    NgramLM,
    arpa_words,
    interpolate,
    is_arpa,
    train_ngram,
)
from asr.inference.options import LEXICON_FREE
from asr.tokenizer import SPACE_PIECE, Tokenizer

Spellings = dict[str, list[list[str]]]  # word -> its spellings, each a list of token pieces


def spell_word(word: str, tokenizer: Tokenizer) -> list[str] | None:
    """The token pieces of `word` as the decoder's lexicon wants them, or None if unspellable.

    Char: the letters ("|" between words is the silence token, optional). SentencePiece: the
    word's pieces ("▁" first).
    """
    try:
        ids = tokenizer.encode(word)
    except ValueError:
        return None
    pieces = [tokenizer.id_to_piece(i) for i in ids]
    if not ids or SPACE_PIECE in pieces or "<unk>" in pieces:
        return None  # a word that normalizes to several words (or to nothing) is no word
    return pieces


def write_spellings(lexicon: Mapping[str, list[list[str]]], path: str | Path) -> Path:
    """Write `word<TAB>piece piece ...`, one line per spelling; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for word, spellings in lexicon.items():
            for spelling in spellings:
                f.write(f"{word}\t{' '.join(spelling)}\n")
    return path


def write_lexicon(words: Iterable[str], tokenizer: Tokenizer, path: str | Path) -> list[str]:
    """Write the lexicon of `words` for `tokenizer`; returns the words left out.

    Words the tokenizer cannot spell (unknown characters) and the markers <s>, </s>, <unk> are
    left out.
    """
    lexicon: Spellings = {}
    skipped = []
    for word in words:
        if word in (BOS, EOS, UNK):
            continue
        spelling = spell_word(word, tokenizer)
        if spelling is None:
            skipped.append(word)
        else:
            lexicon[word] = [spelling]
    write_spellings(lexicon, path)
    return skipped


def write_word_lm(
    texts: Iterable[str],
    tokenizer: Tokenizer,
    arpa: str | Path,
    lexicon: str | Path,
    order: int = 3,
    background: NgramLM | None = None,
    weight: float = 0.5,
) -> tuple[NgramLM, list[str], list[str]]:
    """A word n-gram (interpolated Kneser-Ney) of `texts` written to `arpa`, and the lexicon of
    its words spelled for `tokenizer` written to `lexicon`.

    With a `background` model (the general English LM, `asr.inference.english`): the n-gram of
    `texts` with weight `weight` and the background with 1 - `weight`, interpolated into one
    model of both vocabularies (`asr.inference.lm.interpolate`), so words never seen in `texts`
    can be written while the in-domain ones keep their share.

    Returns the model, its words (sorted, without <s>, </s>, <unk>) and the words left out of
    the lexicon (characters the tokenizer lacks).
    """
    lm = train_ngram(texts, order=order)
    if background is not None:
        lm = interpolate([lm, background], [weight, 1.0 - weight])
    words = sorted(w for w in lm.vocabulary if w not in (BOS, EOS, UNK))
    skipped = write_lexicon(words, tokenizer, lexicon)
    lm.write_arpa(arpa)
    return lm, words, skipped


def token_sentences(texts: Iterable[str | Sequence[str]], tokenizer: Tokenizer) -> list[list[str]]:
    """Each text (a string, or a list of words) as the model's token pieces, "|" between words
    for a character model; characters the tokenizer lacks are dropped."""
    sentences = []
    for text in texts:
        ids = tokenizer.encode(text if isinstance(text, str) else " ".join(text), True)
        if ids:
            sentences.append([tokenizer.id_to_piece(i) for i in ids])
    return sentences


def write_token_lm(
    texts: Iterable[str],
    tokenizer: Tokenizer,
    arpa: str | Path,
    order: int = 6,
    background: Iterable[Sequence[str]] | None = None,
    weight: float = 0.5,
) -> NgramLM:
    """An n-gram over the model's tokens (interpolated Kneser-Ney) of `texts`, written to
    `arpa`: the LM of lexicon-free beam search (`DecodingOptions(lexicon=LEXICON_FREE)`), which
    scores every emitted token, the word separator "|" included, and so can write any word.

    `background`: more text (sentences as word lists, e.g. `asr.inference.english.
    english_sentences`) whose own token n-gram gets 1 - `weight` in the interpolation.
    """
    if order > KENLM_MAX_ORDER:
        raise ValueError(f"the decoder's KenLM loads n-grams up to order {KENLM_MAX_ORDER}, "
                         f"not {order}")  # fmt: skip
    lm = train_ngram(token_sentences(texts, tokenizer), order=order)
    if background is not None:
        other = train_ngram(token_sentences(background, tokenizer), order=order)
        lm = interpolate([lm, other], [weight, 1.0 - weight])
    lm.write_arpa(arpa)
    return lm


def read_lexicon(path: str | Path, tokenizer: Tokenizer) -> Spellings:
    """Lines `word` (spelled with the tokenizer) or `word piece piece ...` -> word: spellings.

    A trailing "|" (torchaudio's char lexicons) is dropped: it would make the decoder wait for a
    separator after the last word, which a CTC model trained on plain text never emits.
    """
    known = {tokenizer.id_to_piece(i) for i in range(1, tokenizer.vocab_size)}
    lexicon: Spellings = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            word, spelling = fields[0], fields[1:] or spell_word(fields[0], tokenizer)
            if spelling is None:
                continue  # a word this model cannot write: it simply is never output
            if tokenizer.space_id is not None and spelling[-1] == SPACE_PIECE:
                spelling = spelling[:-1]  # "|" is the optional silence between words
            if not spelling:
                raise ValueError(f"{path}:{number}: {word!r} is spelled with no token")
            unknown = [p for p in spelling if p not in known]
            if unknown:
                raise ValueError(
                    f"{path}:{number}: the spelling of {word!r} uses tokens {unknown} that the "
                    f"model's tokenizer does not have"
                )
            lexicon.setdefault(word, []).append(spelling)
    if not lexicon:
        raise ValueError(f"lexicon {path} holds no word this model can spell")
    return lexicon


def lexicon_for(tokenizer: Tokenizer, lm: str | None, lexicon: str | None) -> Spellings | None:
    """The decoder's lexicon: the `lexicon` file, else an ARPA `lm`'s words, else None (free:
    no `lm`, or `lexicon` LEXICON_FREE, where an ARPA `lm` must be over the model's tokens)."""
    if lexicon == LEXICON_FREE:
        if lm is not None and is_arpa(lm):
            _check_token_lm(lm, tokenizer)
        return None
    if lexicon is not None:
        return read_lexicon(lexicon, tokenizer)
    if lm is None:
        return None
    if not is_arpa(lm):
        raise ValueError(
            f"the binary language model {lm} needs a lexicon (--lexicon FILE, one word "
            f"per line); an ARPA model's own word list is used when no lexicon is given"
        )
    spelled = {w: spell_word(w, tokenizer) for w in arpa_words(lm)}
    found = {w: [s] for w, s in spelled.items() if s is not None}
    if not found:
        raise ValueError(f"language model {lm} holds no word this model can spell")
    return found


def _check_token_lm(lm: str, tokenizer: Tokenizer) -> None:
    """Lexicon-free decoding scores tokens: an LM that holds none of them is a word LM."""
    pieces = {tokenizer.id_to_piece(i) for i in range(1, tokenizer.vocab_size)}
    known = pieces & set(arpa_words(lm))
    if len(known) < len(pieces) // 2:
        raise ValueError(
            f"--lexicon {LEXICON_FREE} decodes with an LM over the model's tokens, but {lm} holds "
            f"only {len(known)} of its {len(pieces)} tokens: a word LM needs a lexicon"
        )

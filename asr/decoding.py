"""CTC decoding: greedy and beam search (optionally with a KenLM n-gram and a lexicon), and word
timings from the CTC alignment.

Here: `DecodingOptions`, `greedy_decode` (argmax, collapse repeats, drop blanks; batched and
length-aware), `BeamSearchDecoder` (torchaudio's flashlight `ctc_decoder`), `make_decoder`,
`align_words` (forced alignment of the decoded tokens -> `Word`s with times and confidence),
lexicon helpers (`spell_word`, `read_lexicon`, `arpa_words`) and `write_arpa`, which writes a
small hand-made n-gram model (tests, demos).

Every decoder maps log_probs (B, T', V) with out_lengths (B,) to token ids per utterance, blanks
removed and repeats collapsed. Blank is id 0 (Graves et al. 2006).

How words are found: with a char tokenizer the piece "|" (the space) separates words; with
SentencePiece a piece starting with "▁" begins a word.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio
from torch import Tensor

from asr.data import ctc_min_frames
from asr.tokenizer import BLANK_ID, BLANK_PIECE, SPACE_PIECE, CharTokenizer, Tokenizer

SP_WORD_START = "▁"
EXTRA_SIL_PIECE = "<sil>"  # SentencePiece has no silence token: one is added, never emitted
SPACE_ID = 1  # CharTokenizer: id 1 is the space, shown "|"
NEVER = -1e9  # log-probability of that added token (finite: flashlight sums scores)

Decoder = Callable[[Tensor, Tensor], list[list[int]]]


@dataclass(frozen=True)
class Word:
    """One recognized word: times in seconds from the start of the input, confidence in [0, 1]."""

    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class DecodingOptions:
    """`beam_size=1` with no `lm` and no `lexicon` is greedy decoding; anything else is beam search.

    lm: KenLM model, ARPA text or binary. lexicon: file of `word [token ...]` lines (the words
    the decoder may output); without it decoding is lexicon-free, except that with an ARPA `lm`
    the lexicon is the LM's own unigrams. lm_weight scales the LM log-probability, word_score is
    added per word, beam_threshold prunes hypotheses that far below the best. log_add sums the
    scores of alignments of the same prefix (a prefix beam search) instead of keeping the best.
    """

    beam_size: int = 1
    lm: str | None = None
    lexicon: str | None = None
    lm_weight: float = 2.0
    word_score: float = 0.0
    beam_threshold: float = 50.0
    log_add: bool = True

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        for name in ("lm", "lexicon"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{name} file not found: {value}")

    @property
    def greedy(self) -> bool:
        return self.beam_size == 1 and self.lm is None and self.lexicon is None


def greedy_decode(log_probs: Tensor, out_lengths: Tensor) -> list[list[int]]:
    """log_probs (B, T', V), out_lengths (B,) -> per utterance the collapsed argmax path."""
    B, T, _ = log_probs.shape
    best = log_probs.argmax(dim=-1)  # (B, T')
    keep = best != BLANK_ID  # (B, T')
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    keep &= torch.arange(T, device=best.device)[None, :] < out_lengths.to(best.device)[:, None]
    best, keep = best.cpu(), keep.cpu()
    return [best[b][keep[b]].tolist() for b in range(B)]


class BeamSearchDecoder:
    """Flashlight's CTC beam search (lexicon-free, or lexicon-constrained with an n-gram LM)."""

    def __init__(self, tokenizer: Tokenizer, options: DecodingOptions) -> None:
        from torchaudio.models.decoder import ctc_decoder

        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.is_char = isinstance(tokenizer, CharTokenizer)
        tokens = [BLANK_PIECE] + [tokenizer.id_to_piece(i) for i in range(1, self.vocab_size)]
        sil = SPACE_PIECE if self.is_char else EXTRA_SIL_PIECE
        if not self.is_char:
            tokens.append(EXTRA_SIL_PIECE)
        lexicon = _lexicon_for(tokenizer, options)
        self.has_lexicon = lexicon is not None
        with tempfile.TemporaryDirectory() as tmp:
            lexicon_path = None
            if lexicon is not None:
                lexicon_path = str(Path(tmp) / "lexicon.txt")
                _write_lexicon(lexicon, lexicon_path)
            try:
                self._decoder = ctc_decoder(
                    lexicon=lexicon_path,
                    tokens=tokens,
                    lm=options.lm,
                    beam_size=options.beam_size,
                    beam_threshold=options.beam_threshold,
                    lm_weight=options.lm_weight,
                    word_score=options.word_score,
                    log_add=options.log_add,
                    blank_token=BLANK_PIECE,
                    sil_token=sil,
                )
            except RuntimeError as err:  # KenLM's loader reports format problems this way
                reason = str(err).strip().splitlines()[-1]
                raise ValueError(f"cannot load language model {options.lm}: {reason}") from None

    def __call__(self, log_probs: Tensor, out_lengths: Tensor) -> list[list[int]]:
        """log_probs (B, T', V), out_lengths (B,) -> best token ids per utterance."""
        emissions = log_probs.detach().float().cpu()  # (B, T', V)
        if not self.is_char:  # the added silence column: (B, T', V + 1)
            emissions = torch.nn.functional.pad(emissions, (0, 1), value=NEVER)
        emissions = emissions.contiguous()
        B, _, N = emissions.shape
        decoded = []
        for b in range(B):
            T = int(out_lengths[b])
            pointer = emissions.data_ptr() + 4 * b * emissions.stride(0)  # float32: 4 bytes
            results = self._decoder.decoder.decode(pointer, T, N) if T > 0 else []
            # results[0].tokens is the best path, one label per frame between a start and an
            # end silence that flashlight adds (CTCDecoder's own output merges them with any
            # emitted "|", so it is not used).
            if self.has_lexicon:
                decoded.append(self._word_ids(results[0].words if results else []))
                continue
            path = results[0].tokens[1 : T + 1] if results else []
            decoded.append([t for t in _collapse(path) if t < self.vocab_size])
        return decoded

    def _word_ids(self, word_indices: list[int]) -> list[int]:
        # With a lexicon the words are the result: the token path may omit the optional "|"
        # between two words, which would merge them ("oscar must" -> "oscarmust").
        words = [self._decoder.word_dict.get_entry(i) for i in word_indices if i >= 0]
        return self.tokenizer.encode(" ".join(words)) if words else []


def _collapse(path: list[int]) -> list[int]:
    return [label for label, _ in itertools.groupby(path) if label != BLANK_ID]


def make_decoder(tokenizer: Tokenizer, options: DecodingOptions) -> Decoder:
    """Greedy decoding when `options.greedy`, else a `BeamSearchDecoder` (loads the LM once)."""
    if options.greedy:
        return greedy_decode
    return BeamSearchDecoder(tokenizer, options)


# --------------------------------------------------------------------------------------------
# Lexicons and n-gram files


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


def read_lexicon(path: str | Path, tokenizer: Tokenizer) -> dict[str, list[list[str]]]:
    """Lines `word` (spelled with the tokenizer) or `word piece piece ...` -> word: spellings.

    A trailing "|" (torchaudio's char lexicons) is dropped: it would make the decoder wait for a
    separator after the last word, which a CTC model trained on plain text never emits.
    """
    known = {tokenizer.id_to_piece(i) for i in range(1, tokenizer.vocab_size)}
    lexicon: dict[str, list[list[str]]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            word, spelling = fields[0], fields[1:] or spell_word(fields[0], tokenizer)
            if spelling is None:
                continue  # a word this model cannot write: it simply is never output
            if isinstance(tokenizer, CharTokenizer) and spelling[-1] == SPACE_PIECE:
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


def is_arpa(path: str | Path) -> bool:
    """True for an ARPA text model (it starts with `\\data\\`), False for a KenLM binary."""
    with open(path, "rb") as f:
        return f.read(4096).lstrip().startswith(b"\\data\\")


def arpa_words(path: str | Path) -> list[str]:
    """The words of an ARPA model's unigram section, without <s>, </s> and <unk>."""
    words, in_unigrams = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams:
                    break
                in_unigrams = line == "\\1-grams:"
            elif in_unigrams and line:
                word = line.split()[1]
                if word not in ("<s>", "</s>", "<unk>"):
                    words.append(word)
    return words


def _lexicon_for(
    tokenizer: Tokenizer, options: DecodingOptions
) -> dict[str, list[list[str]]] | None:
    if options.lexicon is not None:
        return read_lexicon(options.lexicon, tokenizer)
    if options.lm is None:
        return None
    if not is_arpa(options.lm):
        raise ValueError(
            f"the binary language model {options.lm} needs a lexicon (--lexicon FILE, one word "
            f"per line); an ARPA model's own word list is used when no lexicon is given"
        )
    spelled = {w: spell_word(w, tokenizer) for w in arpa_words(options.lm)}
    lexicon = {w: [s] for w, s in spelled.items() if s is not None}
    if not lexicon:
        raise ValueError(f"language model {options.lm} holds no word this model can spell")
    return lexicon


def _write_lexicon(lexicon: dict[str, list[list[str]]], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for word, spellings in lexicon.items():
            for spelling in spellings:
                f.write(f"{word}\t{' '.join(spelling)}\n")


def write_arpa(path: str | Path, ngrams: Mapping[tuple[str, ...], float]) -> None:
    """Write an ARPA n-gram model from `{(w1, ..., wn): log10 probability}`, backoffs 0.

    <s>, </s> and <unk> are added as unigrams when missing (<s> is never predicted: -99). Every
    n-gram's history must itself be listed, as ARPA requires. KenLM needs at least bigrams: a
    unigram model gets the bigram "<s> </s>" with the probability of "</s>".
    """
    grams = {("<s>",): -99.0, ("</s>",): -1.0, ("<unk>",): -99.0, **dict(ngrams)}
    if max(len(g) for g in grams) == 1:
        grams["<s>", "</s>"] = grams["</s>",]
    order = max(len(g) for g in grams)
    for gram in grams:
        if len(gram) > 1 and gram[:-1] not in grams:
            raise ValueError(f"n-gram {gram} has no entry for its history {gram[:-1]}")
    lines = ["", "\\data\\"]
    lines += [f"ngram {n}={sum(len(g) == n for g in grams)}" for n in range(1, order + 1)]
    for n in range(1, order + 1):
        lines += ["", f"\\{n}-grams:"]
        for gram, logp in grams.items():
            if len(gram) == n:
                backoff = "\t0.0" if n < order else ""
                lines.append(f"{logp:.6f}\t{' '.join(gram)}{backoff}")
    lines += ["", "\\end\\", ""]
    Path(path).write_text("\n".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Word timings


def align_words(
    log_probs: Tensor,
    token_ids: list[int],
    tokenizer: Tokenizer,
    frame_seconds: float,
    offset: float = 0.0,
) -> list[Word]:
    """Words of `token_ids` with times from the CTC forced alignment over log_probs (T', V).

    `log_probs` holds one utterance's valid frames only. A word starts at the first frame of its
    first token and ends after the last frame of its last token; times are
    `offset + frame * frame_seconds`. Confidence is the geometric mean, over the frames aligned
    to the word's tokens (blank frames excluded), of the posterior of the aligned token.

    Char tokenizers: the "|" between words is aligned too when the frames allow it (a beam search
    may put a separator where the model emitted none; then the words alone are aligned).
    """
    words = split_words(token_ids, tokenizer)
    if not words:
        return []
    T = log_probs.shape[0]
    targets = [i for word in words for i in word]
    if isinstance(tokenizer, CharTokenizer):
        with_spaces = [i for word in words for i in (*word, SPACE_ID)][:-1]
        if ctc_min_frames(with_spaces) <= T:
            targets = with_spaces
    assert ctc_min_frames(targets) <= T, (len(targets), T)
    path, scores = torchaudio.functional.forced_align(
        log_probs.detach().float().cpu()[None],  # (1, T', V)
        torch.tensor([targets], dtype=torch.int32),  # (1, L)
        torch.tensor([T]),
        torch.tensor([len(targets)]),
        blank=BLANK_ID,
    )  # path (1, T'), scores (1, T'): the aligned label and its log-probability per frame
    runs = _token_runs(path[0].tolist())
    assert [label for label, _, _ in runs] == targets, (runs, targets)
    if isinstance(tokenizer, CharTokenizer):
        runs = [run for run in runs if run[0] != SPACE_ID]
    frame_scores, result, first = scores[0].tolist(), [], 0
    for word in words:
        group, first = runs[first : first + len(word)], first + len(word)
        logp = [frame_scores[t] for _, s, e in group for t in range(s, e + 1)]
        start, end = group[0][1], group[-1][2] + 1
        result.append(
            Word(
                tokenizer.decode(word).strip(),
                offset + start * frame_seconds,
                offset + end * frame_seconds,
                math.exp(sum(logp) / len(logp)),
            )
        )
    return result


def split_words(token_ids: list[int], tokenizer: Tokenizer) -> list[list[int]]:
    """Token ids -> the ids of each word (blanks and "|" separators dropped, empty words too)."""
    is_char = isinstance(tokenizer, CharTokenizer)
    words: list[list[int]] = [[]]
    for i in token_ids:
        if i == BLANK_ID:
            continue
        if is_char and i == SPACE_ID:
            words.append([])
            continue
        if not is_char and tokenizer.id_to_piece(i).startswith(SP_WORD_START):
            words.append([])
        words[-1].append(i)
    return [w for w in words if w and tokenizer.decode(w).strip()]


def _token_runs(path: list[int]) -> list[tuple[int, int, int]]:
    """(label, first frame, last frame) of each token of a CTC path (a run of one non-blank)."""
    runs: list[tuple[int, int, int]] = []
    for t, label in enumerate(path):
        if label == BLANK_ID:
            continue
        if t > 0 and path[t - 1] == label:
            runs[-1] = (label, runs[-1][1], t)
        else:
            runs.append((label, t, t))
    return runs

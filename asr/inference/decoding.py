"""CTC decoding: greedy, and beam search with an optional KenLM n-gram and lexicon.

Here: `DecodingOptions` (the one definition of every decoding option and its default; each
command's decoding flags are generated from it by `asr.cli.decoding`), `greedy_decode` (argmax,
collapse repeats, drop blanks; batched and length-aware), `BeamSearchDecoder` (torchaudio's
flashlight `ctc_decoder`) and `make_decoder`.

Every decoder maps log_probs (B, T', V) with out_lengths (B,) to token ids per utterance, blanks
removed and repeats collapsed. Blank is id 0 (Graves et al. 2006). Lexicons are in
`asr.inference.lexicon`, word timings in `asr.inference.alignment`.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from asr.inference.lexicon import lexicon_for, write_spellings
from asr.tokenizer import BLANK_ID, BLANK_PIECE, SPACE_PIECE, Tokenizer

EXTRA_SIL_PIECE = "<sil>"  # SentencePiece has no silence token: one is added, never emitted
NEVER = -1e9  # log-probability of that added token (finite: flashlight sums scores)
# Beam width when an LM or a lexicon is given and no beam size is: the setting the demo's LM
# result was measured with (BENCHMARKS.md).
DEFAULT_LM_BEAM = 50

Decoder = Callable[[Tensor, Tensor], list[list[int]]]


@dataclass(frozen=True)
class DecodingOptions:
    """How log-probs become words. No `lm`, no `lexicon` and `beam_size` 1 is greedy decoding.

    Each field's `help` is the text of its command-line flag (`--beam-size`, `--lm`, ...).
    """

    beam_size: int | None = field(
        default=None,
        metadata={"help": "beams; default 1 (greedy) without --lm/--lexicon, "
                  f"{DEFAULT_LM_BEAM} with them"},
    )  # fmt: skip
    lm: str | None = field(default=None, metadata={"help": "KenLM n-gram model, ARPA or binary"})
    lexicon: str | None = field(
        default=None,
        metadata={"help": "words to decode: `word [token ...]` per line (default with an ARPA "
                  "--lm: its words)"},
    )  # fmt: skip
    # Measured on the demo (BENCHMARKS.md, "LM weight"): weights 0.5-3 and word scores -1..2
    # with the 3-gram, 1.0 and 0 were best.
    lm_weight: float = field(default=1.0, metadata={"help": "LM log-probability scale"})
    word_score: float = field(default=0.0, metadata={"help": "added to the score per word"})
    # flashlight's own default (natural-log score units), kept: not tuned here.
    beam_threshold: float = field(
        default=50.0, metadata={"help": "prune hypotheses this far below the best"}
    )
    # A prefix beam search (sums alignments of a prefix); False keeps the best alignment only.
    log_add: bool = field(default=True, metadata={"help": "sum the scores of a prefix's paths"})

    def __post_init__(self) -> None:
        if self.beam_size is None:
            beam = DEFAULT_LM_BEAM if self.lm is not None or self.lexicon is not None else 1
            object.__setattr__(self, "beam_size", beam)
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
    """Flashlight's CTC beam search (lexicon-free, or lexicon-constrained with an n-gram LM).

    The decoder's silence token is the tokenizer's word separator ("|") where it has one;
    otherwise (SentencePiece) an extra token that is never emitted.
    """

    def __init__(self, tokenizer: Tokenizer, options: DecodingOptions) -> None:
        from torchaudio.models.decoder import ctc_decoder

        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.extra_sil = tokenizer.space_id is None
        tokens = [BLANK_PIECE] + [tokenizer.id_to_piece(i) for i in range(1, self.vocab_size)]
        if self.extra_sil:
            tokens.append(EXTRA_SIL_PIECE)
        lexicon = lexicon_for(tokenizer, options.lm, options.lexicon)
        self.has_lexicon = lexicon is not None
        with tempfile.TemporaryDirectory() as tmp:
            lexicon_path = None
            if lexicon is not None:
                lexicon_path = str(write_spellings(lexicon, Path(tmp) / "lexicon.txt"))
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
                    sil_token=EXTRA_SIL_PIECE if self.extra_sil else SPACE_PIECE,
                )
            except RuntimeError as err:  # KenLM's loader reports format problems this way
                reason = str(err).strip().splitlines()[-1]
                raise ValueError(f"cannot load language model {options.lm}: {reason}") from None

    def __call__(self, log_probs: Tensor, out_lengths: Tensor) -> list[list[int]]:
        """log_probs (B, T', V), out_lengths (B,) -> best token ids per utterance."""
        emissions = log_probs.detach().float().cpu()  # (B, T', V)
        if self.extra_sil:  # the added silence column: (B, T', V + 1)
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

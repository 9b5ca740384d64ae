"""CTC decoding: greedy, and beam search with an optional KenLM n-gram and lexicon.

Here: `collapse` (the one CTC collapse: merge repeats, drop blanks; also incremental, for
streaming), `greedy_decode` (argmax then `collapse`; batched and length-aware),
`BeamSearchDecoder` (torchaudio's flashlight `ctc_decoder`) and `make_decoder`, which builds
either from `DecodingOptions` (`asr.inference.options`); `make_decoders` builds several that
load their shared n-gram once (an LM weight search).

Every decoder maps log_probs (B, T', V) with out_lengths (B,) to token ids per utterance, blanks
removed and repeats collapsed. Blank is id 0 (Graves et al. 2006). Lexicons are in
`asr.inference.lexicon`, word timings in `asr.inference.alignment`.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from asr.inference.lexicon import lexicon_for, write_spellings
from asr.inference.options import DecodingOptions
from asr.tokenizer import BLANK_ID, BLANK_PIECE, SPACE_PIECE, Tokenizer

EXTRA_SIL_PIECE = "<sil>"  # SentencePiece has no silence token: one is added, never emitted
NEVER = -1e9  # log-probability of that added token (finite: flashlight sums scores)

Decoder = Callable[[Tensor, Tensor], list[list[int]]]


def collapse(labels: list[int], previous: int = BLANK_ID) -> list[int]:
    """A CTC label path -> its tokens: repeats merged, blanks dropped. `previous` is the label
    before `labels` (a stream's last frame), so a path cut anywhere collapses the same."""
    return [label for label, _ in itertools.groupby([previous, *labels]) if label != BLANK_ID][
        previous != BLANK_ID :
    ]


def greedy_decode(log_probs: Tensor, out_lengths: Tensor) -> list[list[int]]:
    """log_probs (B, T', V), out_lengths (B,) -> per utterance the collapsed argmax path."""
    best = log_probs.argmax(dim=-1).cpu()  # (B, T')
    return [collapse(best[b, : int(length)].tolist()) for b, length in enumerate(out_lengths)]


class BeamSearchDecoder:
    """Flashlight's CTC beam search (lexicon-free, or lexicon-constrained with an n-gram LM).

    The decoder's silence token is the tokenizer's word separator ("|") where it has one;
    otherwise (SentencePiece) an extra token that is never emitted. Lexicon-free (no lexicon,
    or `lexicon=LEXICON_FREE` with an LM over the model's tokens) the LM scores every emitted
    token, "|" included, and `word_score` is flashlight's silence score, added per frame of "|"
    (its lexicon-free decoder has no word score). `lm_of`: a decoder with the same `lm` and
    `lexicon` whose loaded n-gram this one uses instead of loading its own (KenLM only reads
    it, and the lexicon gives both the same word indices).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        options: DecodingOptions,
        lm_of: BeamSearchDecoder | None = None,
    ) -> None:
        from torchaudio.models.decoder import ctc_decoder

        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.extra_sil = tokenizer.space_id is None
        tokens = [BLANK_PIECE] + [tokenizer.id_to_piece(i) for i in range(1, self.vocab_size)]
        if self.extra_sil:
            tokens.append(EXTRA_SIL_PIECE)
        lexicon = lexicon_for(tokenizer, options.lm, options.lexicon)
        self.has_lexicon = lexicon is not None
        self.lm_files = (options.lm, options.lexicon)
        if lm_of is not None and (lm_of.lm_files != self.lm_files or options.lm is None):
            raise ValueError(
                f"a decoder of {self.lm_files} cannot share the LM of {lm_of.lm_files}"
            )
        with tempfile.TemporaryDirectory() as tmp:
            lexicon_path = lm_dict = None
            if lexicon is not None:
                lexicon_path = str(write_spellings(lexicon, Path(tmp) / "lexicon.txt"))
            elif options.lm is not None:
                # Lexicon-free, flashlight asks the LM about token index i; torchaudio's own
                # token-to-LM map is built from an unordered map, so token i would be scored as
                # another token. The LM dictionary, one token per line in id order, fixes it.
                lm_dict = Path(tmp) / "lm_dict.txt"
                lm_dict.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
            try:
                self._decoder = ctc_decoder(
                    lexicon=lexicon_path,
                    tokens=tokens,
                    lm_dict=None if lm_dict is None else str(lm_dict),
                    lm=options.lm if lm_of is None else lm_of.loaded_lm,
                    beam_size=options.beam_size,
                    beam_size_token=options.beam_size_token,
                    beam_threshold=options.beam_threshold,
                    lm_weight=options.lm_weight,
                    word_score=options.word_score,
                    sil_score=0.0 if self.has_lexicon else options.word_score,
                    log_add=options.log_add,
                    blank_token=BLANK_PIECE,
                    sil_token=EXTRA_SIL_PIECE if self.extra_sil else SPACE_PIECE,
                )
            except RuntimeError as err:  # KenLM's loader reports format problems this way
                reason = str(err).strip().splitlines()[-1]
                raise ValueError(f"cannot load language model {options.lm}: {reason}") from None
        self.loaded_lm = self._decoder.lm  # KenLM (or none): kept alive as long as the decoder

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
            decoded.append([t for t in collapse(path) if t < self.vocab_size])
        return decoded

    def _word_ids(self, word_indices: list[int]) -> list[int]:
        # With a lexicon the words are the result: the token path may omit the optional "|"
        # between two words, which would merge them ("oscar must" -> "oscarmust").
        words = [self._decoder.word_dict.get_entry(i) for i in word_indices if i >= 0]
        return self.tokenizer.encode(" ".join(words)) if words else []


def make_decoder(tokenizer: Tokenizer, options: DecodingOptions) -> Decoder:
    """Greedy decoding when `options.greedy`, else a `BeamSearchDecoder` (loads the LM once)."""
    if options.greedy:
        return greedy_decode
    return BeamSearchDecoder(tokenizer, options)


def make_decoders(tokenizer: Tokenizer, options: list[DecodingOptions]) -> list[Decoder]:
    """`make_decoder` of each options, the decoders of one `lm` and `lexicon` sharing one loaded
    n-gram: a grid of LM weights costs one LM in memory, not one per point."""
    first: dict[tuple[str | None, str | None], BeamSearchDecoder] = {}
    decoders: list[Decoder] = []
    for option in options:
        if option.greedy or option.lm is None:
            decoders.append(make_decoder(tokenizer, option))
            continue
        key = (option.lm, option.lexicon)
        decoder = BeamSearchDecoder(tokenizer, option, lm_of=first.get(key))
        first.setdefault(key, decoder)
        decoders.append(decoder)
    return decoders

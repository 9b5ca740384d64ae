"""What every transcribing command is told: `DecodingOptions` and `ChunkingOptions`.

Each is the one definition of its options and their defaults; every command's flags are
generated from their fields (`asr.cli.options`), so `asr transcribe`, `asr evaluate`,
`asr transcribe --manifest` and `asr serve` cannot drift apart and a new option appears in all
of them at once. Each field's `help` metadata is the text of its flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Beam width when an LM or a lexicon is given and no beam size is: the setting the demo's LM
# result was measured with (BENCHMARKS.md).
DEFAULT_LM_BEAM = 50
# Self-attention is quadratic in length: on 2 busy CPU cores the "s" model ran a 60 s file at
# a real-time factor of 0.09 in 10 s chunks, 0.10 in 20 s, 0.13 in 30 s and 0.28 in one piece;
# 20 s keeps most of the speed while staying close to the length of training utterances.
DEFAULT_CHUNK_SECONDS = 20.0
DEFAULT_CHUNK_OVERLAP = 4.0
DEFAULT_BATCH_SECONDS = 120.0
# `lexicon` of lexicon-free beam search with an LM (`--lexicon none`): the LM is over the model's
# tokens ("|" between words) and any spelling can be written (`asr.inference.lexicon`).
LEXICON_FREE = "none"


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
                  f"--lm: its words); '{LEXICON_FREE}': any spelling, --lm over the model's "
                  "tokens"},
    )  # fmt: skip
    # Measured on the demo (BENCHMARKS.md, "LM weight"): weights 0.5-3 and word scores -1..2
    # with the 3-gram, 1.0 and 0 were best.
    lm_weight: float = field(default=1.0, metadata={"help": "LM log-probability scale"})
    # Lexicon-free, flashlight has no word score: it is its score per frame of the word
    # separator "|" (a CTC model emits it in about one frame per word boundary).
    word_score: float = field(default=0.0, metadata={"help": "added to the score per word"})
    # flashlight's default (every token at every frame) keeps characters exact; with hundreds of
    # subword units it makes LM decoding hundreds of times the work of greedy decoding.
    beam_size_token: int | None = field(
        default=None,
        metadata={"help": "tokens tried per frame, the most likely first (default: all); e.g. "
                  "32 for a vocabulary of hundreds of subword units"},
    )  # fmt: skip
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
        if self.beam_size_token is not None and self.beam_size_token < 1:
            raise ValueError(f"beam_size_token must be >= 1, got {self.beam_size_token}")
        files = {"lm": self.lm, "lexicon": None if self.lexicon == LEXICON_FREE else self.lexicon}
        for name, value in files.items():
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{name} file not found: {value}")

    @property
    def greedy(self) -> bool:
        return self.beam_size == 1 and self.lm is None and self.lexicon is None


@dataclass(frozen=True)
class ChunkingOptions:
    """How inputs are cut and batched (`asr.inference.engine`): inputs longer than
    `chunk_seconds` go in windows of that length overlapping by `chunk_overlap`; windows of all
    inputs are batched up to `batch_seconds` of padded audio. Results do not depend on
    `batch_seconds` (padding never changes an output); they do on the windows."""

    batch_seconds: float = field(
        default=DEFAULT_BATCH_SECONDS, metadata={"help": "padded audio per forward pass"}
    )
    chunk_seconds: float = field(
        default=DEFAULT_CHUNK_SECONDS, metadata={"help": "longer inputs go in windows this long"}
    )
    chunk_overlap: float = field(
        default=DEFAULT_CHUNK_OVERLAP,
        metadata={"help": "seconds shared by neighbouring windows"},
    )

    def __post_init__(self) -> None:
        if not 0 <= self.chunk_overlap < self.chunk_seconds:
            raise ValueError(
                f"need 0 <= chunk_overlap < chunk_seconds, got {self.chunk_overlap} and "
                f"{self.chunk_seconds}"
            )
        if self.batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be > 0, got {self.batch_seconds}")

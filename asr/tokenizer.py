"""Tokenizers: characters and SentencePiece (unigram, BPE), with the CTC blank at id 0.

Every tokenizer normalizes text with `asr.text.normalize_text` before encoding, so the tokens
a model is trained on and the text it is scored against agree. `decode` takes ids with the
blanks already removed and the CTC repeats already collapsed by the caller; it skips id 0 if
it still meets one, so the blank never reaches the output text.

A tokenizer serializes to a dict of plain values (`to_dict` / `tokenizer_from_dict`) so that it
can live inside a checkpoint loaded with `torch.load(weights_only=True)`; `save` /
`load_tokenizer` write that dict as JSON.

How id 0 becomes the blank for SentencePiece: the model is trained with `pad_id=0` (piece
`<blank>`, a control symbol that encoding never produces and decoding renders as nothing),
`unk_id=1` and no BOS/EOS. SentencePiece ids are therefore our ids, with no offset. A model
trained elsewhere (NeMo's, blank last) gets a `<blank>` piece inserted at id 0 on import
(`with_blank_first`), which moves its ids up by one and changes no segmentation.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from asr.config import TokenizerConfig
from asr.text import normalize_text

BLANK_ID = 0
BLANK_PIECE = "<blank>"
SPACE_PIECE = "|"  # how the word boundary is shown by `id_to_piece`
SP_WORD_START = "▁"  # SentencePiece marks the first piece of a word with it


class Tokenizer:
    """The interface shared by every tokenizer: text <-> ids, blank id 0."""

    blank_id: int = BLANK_ID
    kind: str = ""
    # How words are found in a token sequence: a separator token between words (characters:
    # id 1, shown "|"), or None when a piece begins a word itself (`begins_word`).
    space_id: int | None = None

    def begins_word(self, i: int) -> bool:
        """Whether token `i` starts a new word (tokenizers without a separator token)."""
        return False

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str, skip_unknown: bool = False) -> list[int]:
        """Ids of the normalized `text`; unknown characters raise ValueError unless skipped."""
        normalized = normalize_text(text)
        unknown = self.unknown_chars(normalized)
        if unknown and not skip_unknown:
            raise ValueError(
                f"{self.kind} tokenizer cannot represent the characters {unknown} in {text!r}"
            )
        if unknown:
            normalized = " ".join("".join(c for c in normalized if c not in unknown).split())
        return self._encode(normalized)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (blanks removed by the caller; any id 0 left over is skipped)."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return self._decode([i for i in ids if i != self.blank_id])

    def unknown_chars(self, text: str) -> list[str]:
        """Characters of the normalized `text` this tokenizer cannot represent, sorted."""
        return sorted({c for c in normalize_text(text) if c != " " and not self._knows(c)})

    def id_to_piece(self, i: int) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _knows(self, char: str) -> bool:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One token per character; id 0 is the blank, id 1 the word boundary (space, shown "|")."""

    kind = "char"
    space_id = 1

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars) - {" "})
        for c in chars:
            if len(c) != 1:
                raise ValueError(f"CharTokenizer: {c!r} is not a single character")
        self._pieces = [BLANK_PIECE, " ", *chars]
        self._ids = {c: i for i, c in enumerate(self._pieces) if i != BLANK_ID}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """The alphabet of the normalized `texts`."""
        chars: set[str] = set()
        for text in texts:
            chars.update(normalize_text(text))
        if not chars - {" "}:
            raise ValueError("cannot build a character tokenizer: the texts hold no characters")
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def id_to_piece(self, i: int) -> str:
        piece = self._pieces[i]
        return SPACE_PIECE if piece == " " else piece

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self._pieces[2:]}

    def _encode(self, text: str) -> list[int]:
        return [self._ids[c] for c in text]

    def _decode(self, ids: list[int]) -> str:
        return "".join(self._pieces[i] for i in ids)

    def _knows(self, char: str) -> bool:
        return char in self._ids


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (unigram or BPE) trained with id 0 = `<blank>`, id 1 = `<unk>`."""

    def __init__(self, model_proto: bytes, kind: str):
        import sentencepiece as spm

        if kind not in ("unigram", "bpe"):
            raise ValueError(
                f"SentencePieceTokenizer kind must be 'unigram' or 'bpe', got {kind!r}"
            )
        self.kind = kind
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        if self._sp.pad_id() != BLANK_ID:
            raise ValueError(
                "SentencePiece model must reserve id 0 for the blank (pad_id=0); "
                f"got pad_id={self._sp.pad_id()}"
            )

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def begins_word(self, i: int) -> bool:
        return self.id_to_piece(i).startswith(SP_WORD_START)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": base64.b64encode(self._proto).decode("ascii")}

    def _encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def _knows(self, char: str) -> bool:
        return self._sp.piece_to_id(char) != self._sp.unk_id()


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """A tokenizer of `config.kind` trained on the normalized `texts`.

    For "unigram" and "bpe", `config.vocab_size` counts every id, the blank and `<unk>` included.
    """
    if config.kind == "char":
        return CharTokenizer.from_texts(texts)
    import sentencepiece as spm

    lines = [t for t in (normalize_text(text) for text in texts) if t]
    if not lines:
        raise ValueError(f"cannot train a {config.kind} tokenizer: no non-empty transcripts")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            model_type=config.kind,
            vocab_size=config.vocab_size,
            character_coverage=1.0,
            pad_id=BLANK_ID,
            pad_piece=BLANK_PIECE,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            normalization_rule_name="identity",  # normalize_text already did it
            minloglevel=2,
        )
    except RuntimeError as err:
        raise ValueError(_explain_training_error(str(err), config)) from None
    return SentencePieceTokenizer(model.getvalue(), config.kind)


def with_blank_first(model_proto: bytes) -> bytes:
    """A SentencePiece model with a `<blank>` control piece inserted at id 0 (pad_id 0): every
    piece's id moves up by one; encoding and decoding are otherwise unchanged."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_proto)
    spec = proto.trainer_spec
    if any(p.piece == BLANK_PIECE for p in proto.pieces) or spec.pad_id >= 0:
        raise ValueError("the SentencePiece model already has a padding or <blank> piece")
    pieces = list(proto.pieces)
    blank = pb.ModelProto.SentencePiece(
        piece=BLANK_PIECE, score=0.0, type=pb.ModelProto.SentencePiece.CONTROL
    )
    del proto.pieces[:]
    proto.pieces.extend([blank, *pieces])
    for name in ("unk_id", "bos_id", "eos_id"):
        if getattr(spec, name) >= 0:
            setattr(spec, name, getattr(spec, name) + 1)
    spec.pad_id, spec.pad_piece = BLANK_ID, BLANK_PIECE
    return proto.SerializeToString()


def _explain_training_error(message: str, config: TokenizerConfig) -> str:
    too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message)
    if too_high:
        return (
            f"tokenizer.vocab_size={config.vocab_size} is too large for the training text: "
            f"the most a {config.kind} model can have here is {too_high.group(2)}"
        )
    too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_low:
        return (
            f"tokenizer.vocab_size={config.vocab_size} is too small: the training text has "
            f"characters and special pieces needing at least {too_low.group(2)} ids"
        )
    return (
        f"SentencePiece training failed ({config.kind}, vocab_size={config.vocab_size}): {message}"
    )


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """The tokenizer `Tokenizer.to_dict` described."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind in ("unigram", "bpe"):
        return SentencePieceTokenizer(base64.b64decode(d["model"]), kind)
    raise ValueError(f"not a tokenizer description (kind={kind!r}); expected char, unigram or bpe")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer written by `Tokenizer.save`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"tokenizer file {path} is not valid JSON: {err}") from None
    try:
        return tokenizer_from_dict(d)
    except (KeyError, ValueError) as err:
        raise ValueError(f"tokenizer file {path}: {err}") from None

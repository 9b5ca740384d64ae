"""Text normalization shared by training-time validation and offline evaluation.

One function, `normalize_text`, is used by both so that the WER reported during training and
the WER reported by `asr evaluate` can never disagree because of case or punctuation.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_PUNCT = re.compile(r"[^\w\s']|_")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class TextNormalizer:
    """Case folding, punctuation removal and whitespace collapsing, each switchable.

    Apostrophes inside words ("don't") are kept; quotes around words are removed.
    """

    lowercase: bool = True
    remove_punctuation: bool = True
    unicode_form: str = "NFKC"

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize(self.unicode_form, text)
        if self.lowercase:
            text = text.lower()
        if self.remove_punctuation:
            text = _PUNCT.sub(" ", text)
            text = " ".join(word.strip("'") for word in text.split())
        return _SPACES.sub(" ", text).strip()


DEFAULT_NORMALIZER = TextNormalizer()


def normalize_text(text: str, normalizer: TextNormalizer = DEFAULT_NORMALIZER) -> str:
    """The normalized form used for scoring: `"Hello, World!" -> "hello world"`."""
    return normalizer(text)

"""asr: Conformer-CTC speech recognition that just works.

import asr
model = asr.load_model("model.pt")
print(model.transcribe(["audio.flac"])[0].text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asr.config import EncoderConfig
from asr.model import CtcModel
from asr.modules.conformer import ConformerEncoder

if TYPE_CHECKING:
    from asr.checkpoint import ModelBundle
    from asr.inference.transcribe import Transcriber

__all__ = ["ConformerEncoder", "CtcModel", "EncoderConfig", "import_nemo", "load_model"]
__version__ = "0.1.0"


def load_model(path: str, device: str = "cpu") -> Transcriber:
    """Load a model bundle (`model.pt`) for transcription: see `asr.inference.transcribe`."""
    from asr.inference.transcribe import load_model as _load

    return _load(path, device=device)


def import_nemo(path: str, output: str | None = None) -> ModelBundle:
    """An NVIDIA NeMo Conformer-CTC `.nemo` file as a model bundle, written to `output` (a
    `model.pt`) when given: see `asr.interop.nemo`."""
    from asr.interop.nemo import import_nemo as _import

    return _import(path, output)

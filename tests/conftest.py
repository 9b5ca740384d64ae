"""Shared test set-up: small thread count (2-core CI machines) and the shared data location."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH_MINI = REPO.parent / "shared" / "data" / "librispeech-mini"

torch.set_num_threads(2)


@pytest.fixture
def librispeech_mini() -> Path:
    """The real LibriSpeech sample shipped beside the repository, or skip."""
    if not (LIBRISPEECH_MINI / "LibriSpeech").is_dir():
        pytest.skip(f"real LibriSpeech sample not found at {LIBRISPEECH_MINI}")
    return LIBRISPEECH_MINI / "LibriSpeech"

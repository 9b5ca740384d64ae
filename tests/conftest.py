"""Shared test set-up: small thread count (2-core CI machines) and the shared data location."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data.manifest import Utterance, write_manifest

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH_MINI = REPO.parent / "shared" / "data" / "librispeech-mini"

torch.set_num_threads(2)


@pytest.fixture
def librispeech_mini() -> Path:
    """The real LibriSpeech sample shipped beside the repository, or skip."""
    if not (LIBRISPEECH_MINI / "LibriSpeech").is_dir():
        pytest.skip(f"real LibriSpeech sample not found at {LIBRISPEECH_MINI}")
    return LIBRISPEECH_MINI / "LibriSpeech"


WORDS = ["up", "down", "left", "right", "go", "stop", "yes", "no"]


def tone_corpus(folder: Path, count: int, seed: int = 0) -> Path:
    """Utterances of 2-3 'words', each word a tone of its own pitch: learnable, fast to make."""
    rng = np.random.default_rng(seed)
    utterances = []
    for i in range(count):
        words = [WORDS[j] for j in rng.integers(0, len(WORDS), size=rng.integers(2, 4))]
        pieces = []
        for word in words:
            t = np.arange(int(0.35 * 16000)) / 16000
            freq = 300 + 150 * WORDS.index(word)
            pieces += [0.3 * np.sin(2 * np.pi * freq * t), np.zeros(1600)]
        wave = np.concatenate(pieces).astype(np.float32)
        wave += 0.01 * rng.standard_normal(wave.shape).astype(np.float32)
        path = folder / f"utt{i:03d}.wav"
        sf.write(path, wave, 16000)
        utterances.append(Utterance(f"utt{i:03d}", str(path), " ".join(words), len(wave) / 16000))
    write_manifest(utterances, folder / "manifest.jsonl")
    return folder / "manifest.jsonl"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return tone_corpus(tmp_path_factory.mktemp("tones"), 24)

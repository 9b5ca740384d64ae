"""A tiny Conformer-CTC really learns speech: trained through `asr train` on a small corpus of
synthesized spoken digit strings, greedy decoding gets most utterances right."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.config import load_config
from asr.data.manifest import Utterance, write_manifest
from asr.inference.transcribe import load_model
from asr.training.train import train

REPO = Path(__file__).resolve().parents[1]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def spoken_digits(folder: Path, count: int, seed: int = 0) -> Path:
    corpus = pytest.importorskip("asr.corpora.synthetic")
    try:
        synthesizer = corpus.find_synthesizer().open()
    except RuntimeError as err:
        pytest.skip(f"no eSpeak NG: {err}")
    import torchaudio

    rng = random.Random(seed)
    resample = torchaudio.transforms.Resample(corpus.ESPEAK_SAMPLE_RATE, 16000)
    utterances = []
    for i in range(count):
        text = " ".join(rng.choice(DIGITS) for _ in range(rng.randint(2, 4)))
        speech = corpus.Speech("en-us", text, rng.randint(160, 190), rng.randint(40, 60), 50, i)
        pcm = synthesizer.synthesize(speech).astype(np.float32) / 32768
        wave = resample(torch.from_numpy(pcm)).numpy()
        path = folder / f"digits{i:03d}.wav"
        sf.write(path, wave, 16000)
        utterances.append(Utterance(f"digits{i:03d}", str(path), text, len(wave) / 16000))
    write_manifest(utterances, folder / "digits.jsonl")
    return folder / "digits.jsonl"


@pytest.mark.slow
def test_tiny_model_learns_to_transcribe_spoken_digits(tmp_path: Path) -> None:
    manifest = spoken_digits(tmp_path, 40)
    config = load_config(
        REPO / "configs/tiny.yaml",
        [
            f"data.train_manifest={manifest}", f"data.val_manifest={manifest}",
            f"exp_dir={tmp_path / 'exp'}", "trainer.max_steps=400", "trainer.val_every_n_steps=400",
            "trainer.progress_bar=false", "data.num_workers=0", "data.max_batch_seconds=20",
            "optim.lr=3e-3", "optim.warmup_steps=50", "augment.speed_factors=[1.0]",
            "augment.time_masks=2", "trainer.average_last_k=1",
        ],
    )  # fmt: skip
    model = load_model(train(config))
    items = [json.loads(line) for line in manifest.read_text().splitlines()]
    results = model.transcribe([str(tmp_path / item["audio"]) for item in items])
    correct = sum(r.text == item["text"] for r, item in zip(results, items))
    assert correct > len(items) / 2, [(r.text, item["text"]) for r, item in zip(results, items)][:5]

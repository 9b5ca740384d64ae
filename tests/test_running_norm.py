"""Running (causal) feature normalization, `features.normalize: running`: each frame by the
statistics of its utterance so far and a prior of the training set's; it never looks ahead, so
a stream normalizes piece by piece exactly as the whole file, and a streaming model can
normalize per voice as offline models do per utterance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from test_streaming import calibrated_streaming_bundle, noise, offline

import asr
from asr.audio import LogMelFeatures, running_normalize
from asr.config import FeatureConfig

RATE = 16000


def frontend(prior: float = 100.0) -> LogMelFeatures:
    features = LogMelFeatures(FeatureConfig(normalize="running", running_prior_frames=prior))
    features.set_global_stats(torch.linspace(-8, -2, 80), torch.linspace(1, 3, 80))
    return features


def test_each_frame_is_normalized_by_the_frames_up_to_it_and_the_prior():
    feats = torch.randn(1, 50, 80, generator=torch.Generator().manual_seed(0)) * 2 - 5
    mean, std, prior = torch.linspace(-8, -2, 80), torch.linspace(1, 3, 80), 7.0
    got, _ = running_normalize(feats, mean, std, prior)
    for t in (0, 1, 17, 49):  # the definition, frame by frame, in float64
        seen = feats[0, : t + 1].double()
        n = prior + t + 1
        mu = (prior * mean.double() + seen.sum(0)) / n
        ex2 = (prior * (std.double() ** 2 + mean.double() ** 2) + (seen**2).sum(0)) / n
        want = (feats[0, t].double() - mu) / (ex2 - mu**2).sqrt()
        torch.testing.assert_close(got[0, t], want.float(), rtol=1e-5, atol=1e-5)


def test_without_a_prior_the_last_frame_sees_the_utterance_statistics():
    feats = torch.randn(2, 300, 80, generator=torch.Generator().manual_seed(1)) * 3 + 4
    got, _ = running_normalize(feats, torch.zeros(80), torch.ones(80), prior_frames=0.0)
    whole = (feats - feats.mean(1, keepdim=True)) / feats.std(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(got[:, -1], whole[:, -1], rtol=1e-4, atol=1e-4)


def test_later_audio_never_changes_earlier_frames():
    """A prefix of the audio gives a prefix of the frames: nothing looks ahead (padding
    invariance: tests/test_audio.py::test_padding_does_not_change_features[running])."""
    features = frontend()
    for seed, n in enumerate([8000, 5000, 1999]):
        wave = torch.randn(1, n, generator=torch.Generator().manual_seed(seed)) * 0.1
        whole, _ = features(wave, torch.tensor([n]))
        prefix, prefix_lengths = features(wave[:, : n // 2], torch.tensor([n // 2]))
        k = int(prefix_lengths[0])
        torch.testing.assert_close(prefix[0], whole[0, :k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sizes", [[400], [555, 1234, 160], [16000]])
def test_pieces_continue_from_the_state_to_the_features_of_the_whole(sizes):
    features = frontend(prior=30.0)
    raw, _ = features(torch.randn(1, 40000) * 0.2, torch.tensor([40000]), normalize=False)
    whole, _ = features.running_normalize(raw)
    state, parts, t = None, [], 0
    for size in itertools.cycle(sizes):
        if t >= raw.shape[1]:
            break
        part, state = features.running_normalize(raw[:, t : t + size], state)
        parts.append(part)
        t += size
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-5, atol=1e-5)
    assert int(state[0][0]) == raw.shape[1]


def test_per_utterance_normalization_cannot_be_continued_piece_by_piece():
    with pytest.raises(ValueError, match="needs the whole utterance"):
        LogMelFeatures(FeatureConfig(normalize="utterance")).continue_features(
            torch.zeros(4000), None
        )


@pytest.fixture(scope="module")
def running_bundle(tmp_path_factory):
    wave = torch.from_numpy(noise(3.0, 1))[None]
    path = tmp_path_factory.mktemp("running") / "model.pt"
    return calibrated_streaming_bundle(path, wave, normalize="running")


@pytest.mark.parametrize(("chunk_ms", "piece_ms"), [(160, 37), (640, 100), (1280, 1000)])
def test_a_running_normalized_model_streams_as_it_decodes_the_whole_file(
    running_bundle, chunk_ms, piece_ms
):
    transcriber = asr.load_model(running_bundle)
    assert transcriber.bundle.frontend.config.normalize == "running"
    wave = noise(5.3, 3) * np.linspace(0.2, 1.5, round(5.3 * RATE), dtype=np.float32)
    stream = transcriber.stream(chunk_ms, None, lookahead_ms=0)
    piece = round(piece_ms / 1000 * RATE)
    for i in range(0, len(wave), piece):
        stream.accept(wave[i : i + piece])
    result = stream.finish()
    got = torch.cat(stream.log_probs)
    want = offline(transcriber.bundle, wave, stream.chunk, stream.left_chunks)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    greedy = transcriber.bundle.tokenizer.decode(
        [int(i) for i in torch.unique_consecutive(want.argmax(-1)) if i != 0]
    )
    assert result.text == " ".join(greedy.split()) and result.text

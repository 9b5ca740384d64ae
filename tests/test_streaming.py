"""Streaming: chunk masks, causal and chunked convolution, dynamic chunk training, and `Stream`
giving the same log-probs (1e-4) as the whole utterance run offline with the equivalent chunk mask,
for several chunk sizes, left contexts and piece sizes that do not line up with chunks. Audio at
another rate: the streaming resampler's pieces join into the offline resampling (1e-5), so a 44.1
kHz file fed in pieces of any size gives the transcript and word times of the file at once."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
import torchaudio
from hypothesis import given, settings
from hypothesis import strategies as st
from serving_helpers import speak

import asr
from asr.audio import LogMelFeatures, load_audio_array
from asr.checkpoint import save_bundle
from asr.cli import main as cli_main
from asr.config import EncoderConfig, FeatureConfig, OptimConfig, TrainConfig
from asr.model import CtcModel, ctc_objective, distilled_objective, frame_kl
from asr.modules.conformer import FULL_CONTEXT
from asr.modules.conv import ConformerConvModule
from asr.modules.masks import chunk_mask, make_pad_mask
from asr.resampling import StreamingResampler, resampling_ratio
from asr.tokenizer import CharTokenizer

RATE = 16000


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    envelope = np.repeat(rng.uniform(0, 1, n // 1600 + 1), 1600)[:n]
    return (0.3 * envelope * rng.standard_normal(n)).astype(np.float32)


CONVS = ["causal", "chunk"]  # the two convolutions that can stream


def streaming_config(conv: str = "causal", **overrides) -> EncoderConfig:
    fields = {"num_layers": 3, "inter_ctc_layers": [1], "self_conditioning": True, **overrides}
    return EncoderConfig.preset(
        "xs", causal_conv=conv == "causal", chunk_conv=conv == "chunk",
        dynamic_chunk_training=True, **fields,
    )  # fmt: skip


def calibrated_streaming_bundle(
    path, wave, chunk=None, space_bias=0.0, normalize="global", conv="causal", **features
):
    """A streaming model (`conv`: "causal" or "chunk" convolutions) with random weights whose
    head is calibrated on `wave` (1, N) at 16 kHz (encoded with attention chunks of `chunk`
    frames), so that its greedy output varies; `space_bias` favours the word boundary; features
    normalized `normalize` ("global" or "running", with the same statistics), other `features`
    fields as given. Saved at `path`."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    model = CtcModel(streaming_config(conv), tokenizer.vocab_size).eval()
    frontend = LogMelFeatures(FeatureConfig(normalize=normalize, **features))
    with torch.no_grad():
        frontend.set_global_stats(torch.full((80,), -6.0), torch.full((80,), 3.0))
        x, _ = model.encoder(*frontend(wave, torch.tensor([wave.shape[1]])), chunk=chunk)
        model.head.weight.div_(x[0].std(0)).mul_(5.0)
        model.head.bias.copy_(-model.head.weight @ x[0].mean(0))
        model.head.bias[tokenizer.space_id] += space_bias
    save_bundle(path, model, frontend, tokenizer)
    return path


@pytest.fixture(scope="module", params=CONVS)
def bundle_path(tmp_path_factory, request):
    """A streaming model with random weights, calibrated so that its greedy output varies: with
    causal convolutions, and with chunked ones."""
    wave = torch.from_numpy(noise(3.0, 1))[None]
    folder = tmp_path_factory.mktemp("stream")
    return calibrated_streaming_bundle(folder / "model.pt", wave, conv=request.param)


def test_chunk_mask():
    blocked = chunk_mask(7, 3)
    assert not blocked[4, 0] and not blocked[4, 5] and blocked[4, 6]  # chunk 1 sees 0 and 1
    limited = chunk_mask(7, 3, left_chunks=0)
    assert limited[4, 2] and not limited[4, 3] and not limited[6, 6]
    assert (~chunk_mask(7, 3, 1)).sum(1).tolist() == [3, 3, 3, 6, 6, 6, 4]


@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_chunked_outputs_never_depend_on_later_audio(bundle_path, chunk):
    bundle = asr.load_model(bundle_path).bundle
    wave = torch.from_numpy(noise(4.0, 2))
    feats, lengths = bundle.frontend(wave[None], torch.tensor([len(wave)]))
    changed = feats.clone()
    cut = 200  # feature frames: encoder frames up to (200 - 7) // 4 only see the original part
    changed[:, cut:] = torch.randn_like(changed[:, cut:])
    with torch.inference_mode():
        a, _ = bundle.model(feats, lengths, chunk=chunk)
        b, _ = bundle.model(changed, lengths, chunk=chunk)
        full_a, _ = bundle.model(feats, lengths)
        full_b, _ = bundle.model(changed, lengths)
    safe = ((cut - 7) // 4 + 1) // chunk * chunk  # whole chunks before the change
    assert safe > 0
    torch.testing.assert_close(a[:, :safe], b[:, :safe], rtol=0, atol=1e-5)
    assert not torch.allclose(full_a[:, :safe], full_b[:, :safe], atol=1e-3)  # full context does


def test_chunked_convolution_is_each_chunk_convolved_alone_with_its_left_context():
    """Reference: chunk by chunk, the centred convolution of [K//2 frames before the chunk (zeros
    before the first), the chunk, K//2 zeros]; at full context (or a chunk as long as the input)
    it is the offline module's convolution with the same weights."""
    torch.manual_seed(3)
    chunked = ConformerConvModule(16, 7, chunked=True).eval()
    centred = ConformerConvModule(16, 7).eval()
    with torch.no_grad():  # a non-trivial batch norm, folded at evaluation
        chunked.norm.running_mean.normal_()
        chunked.norm.running_var.uniform_(0.5, 2.0)
        centred.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 23, 16)
    pad_mask = make_pad_mask(torch.tensor([23, 17]), 23)
    with torch.no_grad():
        torch.testing.assert_close(chunked(x, pad_mask), centred(x, pad_mask))
        torch.testing.assert_close(chunked(x, pad_mask, chunk=23), centred(x, pad_mask))
        for chunk in (1, 3, 5, 8):
            got = chunked(x, pad_mask, chunk)
            inner = chunked.glu(chunked.pointwise_in(chunked.layer_norm(x)))
            inner = inner.masked_fill(pad_mask[..., None], 0.0)  # (B, T, D), as forward does
            want = []
            for start in range(0, 23, chunk):
                left = inner[:, max(0, start - 3) : start]
                before = torch.zeros(2, 3 - left.shape[1], 16)  # zeros before the first
                window = torch.cat([before, left, inner[:, start : start + chunk],
                                    torch.zeros(2, 3, 16)], 1)  # fmt: skip
                want.append(chunked._conv_norm_out(window, None, (0, 0)))
            torch.testing.assert_close(got, torch.cat(want, 1), rtol=0, atol=1e-5)
            assert not torch.allclose(got, centred(x, pad_mask), atol=1e-3)  # chunks differ


def test_a_chunk_conv_model_at_full_context_is_the_offline_model():
    """Same weights: a chunk_conv model without a chunk computes what the centred model does,
    so an offline bundle warm-starts it and its full-context accuracy is the offline one's."""
    torch.manual_seed(4)
    offline_model = CtcModel(EncoderConfig.preset("xs", num_layers=2), 5).eval()
    live = CtcModel(
        streaming_config("chunk", num_layers=2, inter_ctc_layers=[], self_conditioning=False), 5
    ).eval()
    live.load_state_dict(offline_model.state_dict())
    feats, lengths = torch.randn(2, 150, 80), torch.tensor([150, 111])
    with torch.no_grad():
        want, _ = offline_model(feats, lengths)
        got, _ = live(feats, lengths)
        chunked, _ = live(feats, lengths, chunk=4)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(chunked, want, atol=1e-3)


def offline(bundle, wave: np.ndarray, chunk: int, left_chunks: int) -> torch.Tensor:
    feats, lengths = bundle.frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    with torch.inference_mode():
        log_probs, _ = bundle.model(feats, lengths, chunk=chunk, left_chunks=left_chunks)
    return log_probs[0]


@pytest.mark.parametrize(
    ("chunk_ms", "left_seconds", "piece_ms"),
    [(40, None, 37), (160, None, 37), (640, None, 100), (160, 0.32, 37), (640, 0.0, 1000),
     (1280, 2.56, 250)],
)  # fmt: skip
def test_stream_equals_offline_with_the_chunk_mask(bundle_path, chunk_ms, left_seconds, piece_ms):
    transcriber = asr.load_model(bundle_path)
    wave = noise(5.3, 3)
    stream = transcriber.stream(chunk_ms, left_seconds, lookahead_ms=0)
    piece = round(piece_ms / 1000 * RATE)
    partials = [stream.accept(wave[i : i + piece]) for i in range(0, len(wave), piece)]
    result = stream.finish()
    got = torch.cat(stream.log_probs)
    chunk, left = stream.chunk, stream.left_chunks
    assert chunk == round(chunk_ms / 40)
    want = offline(transcriber.bundle, wave, chunk, left)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # partial text only grows, and the final greedy text is what the offline log-probs give
    texts = [p.text.replace(" ", "") for p in partials]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    greedy = transcriber.bundle.tokenizer.decode(
        [int(i) for i in torch.unique_consecutive(want.argmax(-1)) if i != 0]
    )
    assert result.text == " ".join(greedy.split())
    assert all(0 <= w.start < w.end <= 5.3 + 1e-6 for w in result.words)


@pytest.mark.parametrize(("chunk_ms", "lookahead_ms", "left_seconds"),
                         [(160, 80, None), (480, 160, 0.96), (320, 320, 0.0),
                          (40, 120, None)])  # fmt: skip
def test_a_lookahead_stream_sees_its_lookahead_and_nothing_after(
    bundle_path, chunk_ms, lookahead_ms, left_seconds
):
    """Latency-controlled chunks: the first chunk's log-probs are the full-context forward's on
    the first chunk + look-ahead frames; a chunk's log-probs change with audio in its look-ahead
    and never with audio after it; pieces of any size give the same stream."""
    transcriber = asr.load_model(bundle_path)
    bundle = transcriber.bundle
    wave = noise(5.3, 3)

    def run(wave: np.ndarray, lookahead_ms: float, piece_ms: float = 100):
        stream = transcriber.stream(chunk_ms, left_seconds, lookahead_ms=lookahead_ms)
        piece = max(1, round(piece_ms / 1000 * RATE))
        partials = [stream.accept(wave[i : i + piece]) for i in range(0, len(wave), piece)]
        return stream, partials, stream.finish()

    stream, partials, result = run(wave, lookahead_ms)
    chunk, look = stream.chunk, stream.lookahead
    assert (chunk, look) == (round(chunk_ms / 40), round(lookahead_ms / 40))
    got = torch.cat(stream.log_probs)
    assert got.shape == offline(bundle, wave, chunk, -1).shape  # every frame, once
    # the first chunk: full context over its frames and its look-ahead's, nothing else
    window = 4 * (chunk + look - 1) + 7  # feature frames of chunk + look-ahead encoder frames
    feats, _ = bundle.frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    with torch.inference_mode():
        first, _ = bundle.model(feats[:, :window], torch.tensor([window]))
    torch.testing.assert_close(got[:chunk], first[0, :chunk], rtol=0, atol=1e-4)
    # no look-ahead: other log-probs (the look-ahead is seen), the plain chunked stream's
    plain = torch.cat(run(wave, 0)[0].log_probs)
    assert not torch.allclose(plain[:chunk], got[:chunk], atol=1e-3)
    # audio changed after the second chunk's look-ahead (encoder frames < 2C + R: their
    # feature frames' windows end before `cut`): chunks 0-1 unchanged, chunk 2 not
    cut = 160 * (4 * (2 * chunk + look) + 2) + 400
    changed = wave.copy()
    changed[cut:] = noise(len(wave) / RATE, 9)[cut:]
    other = torch.cat(run(changed, lookahead_ms)[0].log_probs)
    torch.testing.assert_close(other[: 2 * chunk], got[: 2 * chunk], rtol=0, atol=1e-5)
    assert not torch.allclose(other[2 * chunk : 3 * chunk], got[2 * chunk : 3 * chunk], atol=1e-3)
    # pieces of any size: the same log-probs and text; partials only grow
    small = run(wave, lookahead_ms, piece_ms=37)
    torch.testing.assert_close(torch.cat(small[0].log_probs), got, rtol=0, atol=1e-4)
    assert small[2].text == result.text != ""
    texts = [p.text.replace(" ", "") for p in partials]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert partials[-1].encoded > 0 and stream.frames_done == got.shape[0]


def test_a_lookahead_chunk_keeps_only_its_first_frames_in_the_state(bundle_path):
    """`forward_chunk(..., emit=E)` of C frames: the same log-probs as without `emit`, and the
    state moved past E frames only: the look-ahead frames' keys, values and convolution inputs
    are left out (the next chunk computes them again)."""
    model = asr.load_model(bundle_path).bundle.model
    torch.manual_seed(5)
    c, e, slots = 6, 4, 12
    feats = torch.randn(1, 4 * (c - 1) + 7, 80)
    state = model.initial_state(1, slots)
    state = state._replace(att_cache=torch.randn_like(state.att_cache),
                           cnn_cache=torch.randn_like(state.cnn_cache),
                           cache_len=torch.tensor([9]))  # fmt: skip
    with torch.inference_mode():
        all_out, all_state = model.forward_chunk(feats, state)
        out, kept = model.forward_chunk(feats, state, e)
        tensor_out, tensor_kept = model.forward_chunk(feats, state, torch.tensor(e))
    torch.testing.assert_close(out, all_out, rtol=0, atol=0)
    assert out.shape[1] == c
    # all C kept: slots [C - E:] of the E-kept cache hold what [:L - (C - E)] of the full one do
    drop = c - e
    torch.testing.assert_close(kept.att_cache[..., drop:, :], all_state.att_cache[..., :-drop, :])
    assert not torch.allclose(kept.att_cache[..., -drop:, :], all_state.att_cache[..., -drop:, :])
    p = model.config.conv_cache_frames
    if p > drop:
        torch.testing.assert_close(kept.cnn_cache[:, :, drop:], all_state.cnn_cache[:, :, :-drop])
    assert kept.cache_len.tolist() == [min(slots, 9 + e)]
    for a, b in zip(kept, tensor_kept):  # a 0-dim tensor (an exported graph's input) as well
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(tensor_out, out, rtol=0, atol=0)


def test_lookahead_is_refused_when_negative(bundle_path):
    with pytest.raises(ValueError, match="lookahead_ms must be >= 0, got -40"):
        asr.load_model(bundle_path).stream(640, lookahead_ms=-40)


KALDI_FEATURES = {
    "framing": "kaldi",
    "preemphasis": 0.97,
    "mel_scale": "slaney",
    "log_guard": "clamp",
}  # fmt: skip  (sherpa-onnx's front end)


def features_in_pieces(frontend: LogMelFeatures, wave: torch.Tensor, sizes: list[int]):
    """The features of `wave` fed in pieces of `sizes` (cycled) as `Stream` computes them: after
    each piece the frames whose windows it completes, from the samples still held; the rest
    (the end mirrored) at the end. Also the most samples held at once."""
    held, base, done, state, out, most = wave[:0], 0, 0, None, [], 0
    for piece in pieces_of(wave.numpy(), sizes):
        held = torch.cat([held, torch.from_numpy(piece)])
        most = max(most, len(held))
        available = frontend.frames_within(base + len(held))
        if available > done:
            feats, state = frontend.continue_features(held, state, done, available, base)
            out.append(feats)
            done, keep_from = available, max(0, frontend.frame_start(available))
            held, base = held[keep_from - base :], keep_from
    out.append(frontend.continue_features(held, state, done, None, base)[0])
    return torch.cat(out), most


@pytest.mark.parametrize("normalize", ["running", "global", "none"])
@pytest.mark.parametrize(
    ("sizes", "seconds"),
    [([1], 0.05), ([1600, 1, 5328, 7, 160], 2.3), ([16000], 1.0155), ([399, 401], 1.2),
     ([5328], 0.013), ([1, 2, 3, 277], 0.6)],
)  # fmt: skip
def test_kaldi_framed_features_in_pieces_equal_the_features_of_the_whole(normalize, sizes, seconds):
    frontend = LogMelFeatures(FeatureConfig(normalize=normalize, **KALDI_FEATURES))
    frontend.set_global_stats(torch.full((80,), -6.0), torch.full((80,), 3.0))
    wave = torch.from_numpy(noise(seconds, 7))
    want, lengths = frontend(wave[None], torch.tensor([len(wave)]))
    got, most = features_in_pieces(frontend, wave, sizes)
    assert got.shape == want[0].shape == (lengths[0], 80)
    torch.testing.assert_close(got, want[0], rtol=0, atol=1e-4)
    # only the samples of the frames to come are held, not the stream's past
    assert most <= max(sizes) + frontend.win + frontend.hop


def test_kaldi_framed_stream_starts_mirrored_and_ends_only_at_finish():
    """Before the end, no frame reads past the samples received; the mirrored end comes only
    with `last` None (the stream's end), and it differs from what later audio gives."""
    frontend = LogMelFeatures(FeatureConfig(normalize="none", **KALDI_FEATURES))
    wave = torch.from_numpy(noise(0.5, 8))
    n = 4000
    assert frontend.frames_within(n) < frontend.num_frames(n)
    early = frontend.continue_features(wave[:n], None, 0, frontend.frames_within(n))[0]
    ended = frontend.continue_features(wave[:n], None)[0]
    whole = frontend(wave[None], torch.tensor([len(wave)]), normalize=False)[0][0]
    torch.testing.assert_close(early, whole[: len(early)], rtol=0, atol=1e-4)
    tail = slice(len(early), len(ended))
    assert not torch.allclose(ended[tail], whole[tail], atol=1e-2)


@pytest.mark.parametrize(("chunk_ms", "piece_ms"), [(160, 37), (640, 333), (320, 0.0625)])
def test_a_kaldi_framed_model_streams_as_its_chunk_masked_forward(tmp_path, chunk_ms, piece_ms):
    wave = noise(2.7, 4)
    path = calibrated_streaming_bundle(tmp_path / "kaldi.pt", torch.from_numpy(wave)[None],
                                    normalize="running", **KALDI_FEATURES)  # fmt: skip
    transcriber = asr.load_model(path)
    stream = transcriber.stream(chunk_ms, None, lookahead_ms=0)
    piece = max(1, round(piece_ms / 1000 * RATE))
    partials = [stream.accept(wave[i : i + piece]) for i in range(0, len(wave), piece)]
    result = stream.finish()
    got = torch.cat(stream.log_probs)
    want = offline(transcriber.bundle, wave, stream.chunk, stream.left_chunks)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert partials[-1].encoded > 0  # chunks ran before the end
    greedy = transcriber.bundle.tokenizer.decode(
        [int(i) for i in torch.unique_consecutive(want.argmax(-1)) if i != 0]
    )
    assert result.text == " ".join(greedy.split()) != ""


def test_stream_memory_is_bounded_with_left_context(bundle_path):
    stream = asr.load_model(bundle_path).stream(160, left_seconds=0.64, lookahead_ms=0)
    wave = noise(12.0, 4)
    for i in range(0, len(wave), 1600):
        stream.accept(wave[i : i + 1600])
        assert stream.state.att_cache.shape[4] == 16  # 4 chunks of 4 frames, fixed
        # audio: a chunk's (the front end runs once a chunk), a piece and a window at most
        assert len(stream.samples) < 2560 + 1600 + 400 and stream.feats.shape[0] < 4 * 4 + 7 + 10


def test_a_model_with_centred_convolutions_cannot_stream(tmp_path):
    tokenizer = CharTokenizer("ab")
    model = CtcModel(EncoderConfig.preset("xs"), tokenizer.vocab_size)
    save_bundle(tmp_path / "m.pt", model, LogMelFeatures(FeatureConfig(normalize="global")),
                tokenizer)  # fmt: skip
    with pytest.raises(ValueError, match="causal_conv"):
        asr.load_model(tmp_path / "m.pt").stream()


@pytest.mark.parametrize("conv", CONVS)
def test_dynamic_chunk_training_draws_chunks_and_learns(conv):
    torch.manual_seed(0)
    model = CtcModel(streaming_config(conv), 5).train()
    draws = [model.encoder.draw_chunk(100) for _ in range(400)]
    full = sum(d is None for d in draws)
    assert 140 < full < 260 and {d for d in draws if d} <= set(range(1, 26))
    # Narrower draws: chunks of 8..25 frames only, full context a quarter of the time.
    narrow = CtcModel(streaming_config(min_chunk_frames=8, full_context_prob=0.25), 5).train()
    draws = [narrow.encoder.draw_chunk(100) for _ in range(400)]
    full = sum(d is None for d in draws)
    assert 60 < full < 140 and {d for d in draws if d} == set(range(8, 26))
    always = CtcModel(streaming_config(full_context_prob=1.0), 5).train()
    assert all(always.encoder.draw_chunk(100) is None for _ in range(50))
    with pytest.raises(ValueError, match="min_chunk_frames"):
        streaming_config(min_chunk_frames=30)
    with pytest.raises(ValueError, match="full_context_prob"):
        streaming_config(full_context_prob=1.5)
    with pytest.raises(ValueError, match="chunk_conv: true or encoder.causal_conv"):
        EncoderConfig.preset("xs", dynamic_chunk_training=True)
    with pytest.raises(ValueError, match="choose one"):
        EncoderConfig.preset("xs", causal_conv=True, chunk_conv=True)
    feats, lengths = torch.randn(2, 120, 80), torch.tensor([120, 90])
    targets, target_lengths = torch.tensor([[1, 2, 3], [4, 1, 0]]), torch.tensor([3, 2])
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(30):
        loss, _ = ctc_objective(model, feats, lengths, targets, target_lengths, 0.3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]


def test_frame_kl_is_the_kl_divergence_over_valid_frames_only():
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 5).log_softmax(-1)
    student = torch.randn(2, 6, 5).log_softmax(-1)
    lengths = torch.tensor([6, 4])
    per_frame = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)  # (B, T')
    expected = torch.cat([per_frame[0], per_frame[1, :4]]).mean()
    assert torch.allclose(frame_kl(teacher, student, lengths), expected)
    assert frame_kl(teacher, teacher, lengths).abs() < 1e-6
    # Padded frames (t >= length) do not count, whatever they hold.
    changed = student.clone()
    changed[1, 4:] = torch.randn(2, 5).log_softmax(-1)
    assert torch.equal(frame_kl(teacher, changed, lengths), frame_kl(teacher, student, lengths))


@pytest.mark.parametrize("conv", CONVS)
def test_dual_mode_objective_is_both_passes_plus_distillation_of_the_chunked_one(conv):
    config = streaming_config(conv, dropout=0.0, attn_dropout=0.0, min_chunk_frames=2,
                              max_chunk_frames=4)  # fmt: skip
    torch.manual_seed(0)
    model = CtcModel(config, 5).train()
    feats, lengths = torch.randn(2, 120, 80), torch.tensor([120, 90])
    targets, target_lengths = torch.tensor([[1, 2, 3], [4, 1, 0]]), torch.tensor([3, 2])
    args = (model, feats, lengths, targets, target_lengths, 0.3)
    torch.manual_seed(5)
    loss, parts = distilled_objective(*args, distill_weight=0.7, dual=True)
    # The same computation, step by step: the full pass never draws, the chunked pass always does.
    torch.manual_seed(5)
    full, full_parts = ctc_objective(*args, chunk=FULL_CONTEXT)
    teacher, out_lengths = model(feats, lengths, chunk=FULL_CONTEXT)
    chunk = model.encoder.draw_chunk(out_lengths.max().item(), full_context_prob=0.0)
    assert chunk in range(2, 5)
    chunked, _ = ctc_objective(*args, chunk=chunk)
    student, _ = model(feats, lengths, chunk=chunk)
    distill = frame_kl(teacher, student, out_lengths)
    assert distill > 0  # the chunked pass differs from the full-context one
    assert torch.allclose(loss, 0.5 * (full + chunked) + 0.7 * distill, atol=1e-5)
    assert torch.allclose(parts["ctc"], full_parts["ctc"], atol=1e-6)
    assert torch.allclose(parts["distill"], distill, atol=1e-6)
    # In-place distillation: the full-context pass is a teacher, not pulled toward its student.
    model.zero_grad()
    torch.manual_seed(5)
    distilled_objective(*args, distill_weight=1.0, dual=True)[0].backward()
    with_distill = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(5)
    (0.5 * (full + chunked) + frame_kl(teacher.detach(), student, out_lengths)).backward()
    assert all(
        torch.allclose(a, p.grad, rtol=1e-4, atol=1e-5)
        for a, p in zip(with_distill, model.parameters())
    )


def test_dual_mode_training_brings_the_chunked_posteriors_to_the_full_context_ones():
    """The same steps (data, seeds) with a larger distillation weight leave the chunked and the
    full-context passes closer: the distillation term does what it is there for."""
    feats = torch.randn(2, 120, 80, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([120, 90])
    targets, target_lengths = torch.tensor([[1, 2, 3], [4, 1, 0]]), torch.tensor([3, 2])
    gaps = {}
    for weight in (0.0, 1.0, 5.0):
        torch.manual_seed(0)
        model = CtcModel(streaming_config("chunk", min_chunk_frames=1, max_chunk_frames=2), 5)
        optimizer = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(30):
            loss, _ = distilled_objective(model.train(), feats, lengths, targets, target_lengths,
                                          0.3, weight, dual=True)  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            full, out_lengths = model(feats, lengths)
            gaps[weight] = frame_kl(full, model(feats, lengths, chunk=1)[0], out_lengths).item()
    assert gaps[5.0] < gaps[1.0] < gaps[0.0] and gaps[5.0] < 0.5 * gaps[0.0], gaps


@pytest.mark.parametrize("conv", CONVS)
def test_distillation_without_dual_mode_teaches_chunked_batches_only(conv):
    config = streaming_config(conv, dropout=0.0, attn_dropout=0.0, min_chunk_frames=2,
                              max_chunk_frames=4, full_context_prob=0.5)  # fmt: skip
    torch.manual_seed(0)
    model = CtcModel(config, 5).train()
    feats, lengths = torch.randn(2, 120, 80), torch.tensor([120, 90])
    targets, target_lengths = torch.tensor([[1, 2, 3], [4, 1, 0]]), torch.tensor([3, 2])
    args = (model, feats, lengths, targets, target_lengths, 0.3)
    frames = model.output_lengths(lengths).max().item()
    kinds = set()
    for seed in range(8):  # both kinds of draw happen
        torch.manual_seed(seed)
        chunk = model.encoder.draw_chunk(frames)
        torch.manual_seed(seed)
        model.zero_grad()
        loss, parts = distilled_objective(*args, distill_weight=0.7)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        if chunk is None:  # a full-context batch: the plain objective, nothing to distil
            kinds.add("full")
            expected, _ = ctc_objective(*args, chunk=FULL_CONTEXT)
            assert "distill" not in parts
        else:  # a chunked batch: its objective plus the KL to a teacher that gets no gradient
            kinds.add("chunk")
            with torch.no_grad():
                teacher, out_lengths = model(feats, lengths, chunk=FULL_CONTEXT)
            chunked, _ = ctc_objective(*args, chunk=chunk)
            student, _ = model(feats, lengths, chunk=chunk)
            expected = chunked + 0.7 * frame_kl(teacher, student, out_lengths)
            assert parts["distill"] > 0
        assert torch.allclose(loss, expected, atol=1e-5)
        expected.backward()
        assert all(torch.allclose(g, p.grad, rtol=1e-4, atol=1e-5)
                   for g, p in zip(grads, model.parameters()))  # fmt: skip
    assert kinds == {"full", "chunk"}


def test_distillation_needs_dynamic_chunk_training():
    for optim in (OptimConfig(dual_mode=True), OptimConfig(distill_weight=0.5)):
        with pytest.raises(ValueError, match="encoder.dynamic_chunk_training: true"):
            TrainConfig(optim=optim)
    with pytest.raises(ValueError, match="optim.distill_weight must be >= 0"):
        OptimConfig(distill_weight=-1.0)
    TrainConfig(
        optim=OptimConfig(dual_mode=True, distill_weight=0.5),
        encoder={"chunk_conv": True, "dynamic_chunk_training": True},
    )


@pytest.mark.parametrize("lookahead_ms", [0, 160])
def test_cli_streaming_prints_partials_and_the_final_result(
    bundle_path, tmp_path, capsys, lookahead_ms
):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, noise(3.0, 5), RATE)
    out = tmp_path / "out"
    argv = ["transcribe", "--model", str(bundle_path), "--streaming", "--chunk-ms", "320",
            "--lookahead-ms", str(lookahead_ms), "--output-dir", str(out), "--format", "txt",
            "json", "srt", str(wav)]  # fmt: skip
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("] ") >= 2, err  # several partial lines, each with its audio time
    stream = asr.load_model(bundle_path).stream(320, lookahead_ms=lookahead_ms)
    stream.accept(noise(3.0, 5))
    final = stream.finish()
    assert (out / "a.txt").read_text().strip() == final.text
    assert (out / "a.srt").is_file() and (out / "a.json").is_file()


@pytest.mark.parametrize("lookahead_ms", [0, 160])
def test_evaluate_streaming_scores_what_each_file_streamed_alone_gives(
    bundle_path, tmp_path, capsys, lookahead_ms
):
    """`asr evaluate --streaming`: each utterance of the manifest fed to its own stream (a WAV
    segment at an offset, a 44.1 kHz file, a corrupt file scored empty), its transcript the
    stream's final text, and scored against the manifest's references."""
    from asr.data.manifest import Utterance, write_manifest

    soundfile.write(tmp_path / "a.wav", noise(4.0, 7), RATE)
    soundfile.write(tmp_path / "b.wav", noise(2.5, 8), 44100)
    (tmp_path / "bad.wav").write_bytes(b"RIFF not audio")
    utts = [Utterance("a", str(tmp_path / "a.wav"), "the cat", 3.0, offset=0.5),
            Utterance("b", str(tmp_path / "b.wav"), "a dog", 2.5),
            Utterance("c", str(tmp_path / "bad.wav"), "gone", 1.0)]  # fmt: skip
    write_manifest(utts, tmp_path / "test.jsonl")
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(bundle_path), "--manifest", str(tmp_path / "test.jsonl"),
            "--streaming", "--chunk-ms", "320", "--lookahead-ms", str(lookahead_ms),
            "--piece-ms", "70", "--output-dir", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    capsys.readouterr()
    got = {
        r["id"]: r for r in map(json.loads, (out / "transcripts.jsonl").read_text().splitlines())
    }
    transcriber = asr.load_model(bundle_path)
    a = soundfile.read(tmp_path / "a.wav", dtype="float32")[0][8000:56000]  # (as PCM16)
    b = soundfile.read(tmp_path / "b.wav", dtype="float32")[0]
    for utt, wave, rate in (("a", a, RATE), ("b", b, 44100)):
        stream = transcriber.stream(320, lookahead_ms=lookahead_ms)
        stream.accept(wave, sample_rate=rate)  # at once: pieces give what the whole gives
        assert got[utt]["text"] == stream.finish().text, utt
    assert got["c"]["error"] and not got["c"]["text"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_utterances"] == 3


def test_evaluate_streaming_refuses_a_model_that_cannot_stream_before_writing(tmp_path, capsys):
    torch.manual_seed(0)
    tokenizer = CharTokenizer("abc")
    model = CtcModel(EncoderConfig.preset("xs", num_layers=1), tokenizer.vocab_size)
    save_bundle(tmp_path / "m.pt", model, LogMelFeatures(FeatureConfig()), tokenizer)
    wav = tmp_path / "a.wav"
    soundfile.write(wav, noise(1.0, 9), RATE)
    (tmp_path / "test.jsonl").write_text(json.dumps({"id": "a", "audio": str(wav),
                                                     "duration": 1.0, "text": "a"}) + "\n")  # fmt: skip
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(tmp_path / "m.pt"), "--manifest",
            str(tmp_path / "test.jsonl"), "--streaming", "--output-dir", str(out)]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asr: error:") and len(err.splitlines()) == 1, err
    assert "cannot stream" in err and not out.exists()


def test_cli_streaming_reads_a_44k_file_in_blocks_without_seams(
    speech_bundle_path, speech_44k, tmp_path, monkeypatch
):
    """`asr transcribe --streaming` feeds the file at its own rate (`feed_file`): read in blocks,
    resampled by the stream as one signal, it gives what the whole file at once gives."""
    import json

    import asr.cli.transcribe
    from asr.inference.streaming import feed_file

    wav = tmp_path / "a.wav"
    soundfile.write(wav, speech_44k, 44100, subtype="FLOAT")
    reads = []

    def spy(*args, **kwargs):
        reads.append(args[1])
        feed_file(*args, **kwargs, read_seconds=0.5)  # 6 blocks of the 2.8 s file

    monkeypatch.setattr(asr.cli.transcribe, "feed_file", spy)
    out = tmp_path / "out"
    argv = ["transcribe", "--model", str(speech_bundle_path), "--streaming", "--device", "cpu",
            "--output-dir", str(out), "--format", "json", str(wav)]  # fmt: skip
    assert cli_main(argv) == 0 and reads == [wav]
    got = json.loads((out / "a.json").read_text())
    stream = asr.load_model(speech_bundle_path).stream()
    stream.accept(soundfile.read(wav, dtype="float32")[0], sample_rate=44100)
    whole = stream.finish()
    assert len(whole.words) >= 3 and got["text"] == whole.text
    for a, b in zip(got["words"], whole.words, strict=True):
        assert abs(a["start"] - b.start) <= stream.frame_seconds + 1e-9, (a, b)


def test_listen_without_a_microphone_is_one_clear_line(bundle_path, capsys):
    assert cli_main(["listen", "--model", str(bundle_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asr: error:") and len(err.splitlines()) == 1, err
    assert any(word in err for word in ("sounddevice", "PortAudio", "microphone")), err


# --- audio at another sample rate -------------------------------------------------------------


def pieces_of(signal: np.ndarray, sizes: list[int]):
    """Consecutive slices of `signal`, cycling through `sizes`, up to its end."""
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(signal):
            return
        yield signal[start : start + size]
        start += size


def resample_in_pieces(signal: np.ndarray, rate: int, sizes: list[int]) -> torch.Tensor:
    resampler = StreamingResampler(rate, RATE)
    out = [resampler(torch.from_numpy(piece)) for piece in pieces_of(signal, sizes)]
    return torch.cat([*out, resampler.flush()])


@pytest.mark.parametrize("rate", [44100, 22050, 8000, 48000])
@pytest.mark.parametrize("sizes", [[1], [37], [1000], [4410], [5, 1, 900, 63, 2000, 17]])
def test_resampling_in_pieces_equals_resampling_at_once(rate, sizes):
    signal = noise(0.7, 6)[: round(0.7 * rate)] if rate <= RATE else np.resize(noise(1, 6), rate)
    want = load_audio_array(signal, rate, RATE)  # the offline path: the file at once
    got = resample_in_pieces(signal, rate, sizes)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from([44100, 22050, 11025, 8000, 48000, 32000, 24000, 44101]),
    st.lists(st.integers(1, 3000), min_size=1, max_size=8),
    st.integers(1, 12000),
)
def test_resampler_output_joins_and_holds_back_only_its_filter(rate, sizes, length):
    signal = np.random.default_rng(length).uniform(-1, 1, length).astype(np.float32)
    orig, new = resampling_ratio(rate, RATE)
    want = torchaudio.functional.resample(torch.from_numpy(signal), orig, new)
    resampler = StreamingResampler(rate, RATE)
    out, received = [], 0
    for piece in pieces_of(signal, sizes):
        out.append(resampler(torch.from_numpy(piece)))
        received += len(piece)
        emitted = sum(len(o) for o in out)
        # held back: the filter's look-ahead and the rest of one block of `orig`, no more
        assert emitted * orig / new > received - resampler.width - orig
    got = torch.cat([*out, resampler.flush()])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def speech_44k() -> np.ndarray:
    """eSpeak NG saying one sentence (2.8 s), at 44.1 kHz."""
    speech = torch.from_numpy(speak(["the old man walked slowly along the river"]))
    return torchaudio.functional.resample(speech, 22050, 44100).numpy()


@pytest.fixture(scope="module")
def speech_bundle_path(tmp_path_factory, speech_44k):
    """A causal model with random weights whose greedy output on speech has several words: its
    head calibrated on the sentence, the word boundary favoured."""
    wave = load_audio_array(speech_44k, 44100, RATE)[None]
    path = tmp_path_factory.mktemp("speech") / "model.pt"
    return calibrated_streaming_bundle(path, wave, chunk=16, space_bias=2.0)


def stream_pieces(transcriber, signal: np.ndarray, rate: int, piece: int):
    stream = transcriber.stream(640)
    for start in range(0, len(signal), piece):
        stream.accept(signal[start : start + piece], sample_rate=rate)
    return stream, stream.finish()


@pytest.mark.parametrize("piece", [1, 37, 1000, 4410])
def test_44k_audio_in_pieces_gives_the_transcript_and_times_of_the_file_at_once(
    speech_bundle_path, speech_44k, piece
):
    transcriber = asr.load_model(speech_bundle_path)
    # 1-sample pieces: the first 1.5 s only (66150 calls to accept)
    signal = speech_44k[: round(1.5 * 44100)] if piece == 1 else speech_44k
    stream, whole = stream_pieces(transcriber, signal, 44100, len(signal))
    _, pieces = stream_pieces(transcriber, signal, 44100, piece)
    assert len(whole.words) >= 3, whole.text  # something to compare
    assert pieces.text == whole.text
    assert pieces.duration == pytest.approx(whole.duration, abs=1e-9)
    for a, b in zip(pieces.words, whole.words, strict=True):
        assert abs(a.start - b.start) <= stream.frame_seconds + 1e-9, (a, b)
        assert abs(a.end - b.end) <= stream.frame_seconds + 1e-9, (a, b)
    # and the file at once is the 16 kHz audio of the offline path, streamed
    _, at_16k = stream_pieces(transcriber, load_audio_array(signal, 44100, RATE).numpy(), RATE,
                              len(signal))  # fmt: skip
    assert at_16k.text == whole.text


def test_a_stream_keeps_the_sample_rate_of_its_first_piece(bundle_path):
    stream = asr.load_model(bundle_path).stream()
    first = stream.accept(np.zeros(4410, np.float32), sample_rate=44100)
    assert first.received == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at 44100 Hz; a piece at 16000 Hz cannot follow"):
        stream.accept(np.zeros(1600, np.float32))

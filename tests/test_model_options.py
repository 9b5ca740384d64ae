"""The configuration options that NeMo's models need, each on its own: the front end's
pre-emphasis, centred frames, window, mel scale, log guard and per-feature normalization; the
padded subsampling, xscaling and shared attention biases of the encoder; and the fine-tuning
options (frozen blocks, a lower encoder learning rate)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torchaudio

from asr.audio import LogMelFeatures
from asr.config import EncoderConfig, FeatureConfig, load_config
from asr.model import CtcModel
from asr.modules.attention import exporting
from asr.modules.subsampling import Conv2dSubsampling, conv_out_length

NEMO_FRONT_END = FeatureConfig(
    preemphasis=0.97, center=True, window="hann_symmetric", mel_scale="slaney",
    log_offset=2**-24, normalize="per_feature",
)  # fmt: skip


def waves(*lengths: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        batch[i, :n] = torch.randn(n, generator=g) * 0.1
    return batch, torch.tensor(lengths)


def test_centred_frames_count_n_over_hop_and_are_centred():
    frontend = LogMelFeatures(dataclasses.replace(NEMO_FRONT_END, normalize="none"))
    assert frontend.num_frames(16000) == 100 and frontend.num_frames(16159) == 100
    assert torch.equal(frontend.num_frames(torch.tensor([0, 159, 160])), torch.tensor([0, 0, 1]))
    wave, length = waves(4000)
    feats, _ = frontend(wave, length)
    # frame t is the mel power of the windowed samples centred on t*hop (zero padded)
    a = 0.97
    pre = torch.cat([wave[:, :1], wave[:, 1:] - a * wave[:, :-1]], dim=1)
    padded = torch.nn.functional.pad(pre, (256, 256))
    window = torch.hann_window(400, periodic=False)
    t = 7
    segment = padded[0, t * 160 : t * 160 + 512].clone()
    segment[:56] = 0
    segment[456:] = 0
    segment[56:456] *= window
    power = torch.fft.rfft(segment.double()).abs() ** 2  # (257,)
    fb = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 80, 16000, "slaney", "slaney")
    expected = torch.log(power @ fb.double() + 2**-24)
    torch.testing.assert_close(feats[0, t].double(), expected, rtol=1e-4, atol=1e-4)


def test_per_feature_normalization_is_the_unbiased_std_plus_1e5():
    raw = LogMelFeatures(dataclasses.replace(NEMO_FRONT_END, normalize="none"))
    norm = LogMelFeatures(NEMO_FRONT_END)
    wave, length = waves(8000)
    x, _ = raw(wave, length)
    expected = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True, unbiased=True) + 1e-5)
    torch.testing.assert_close(norm(wave, length)[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [NEMO_FRONT_END, FeatureConfig()], ids=["nemo", "default"])
def test_front_end_is_padding_invariant(config):
    frontend = LogMelFeatures(config)
    batch, lengths = waves(4000, 9123, 16000, seed=3)
    feats, feat_lengths = frontend(batch, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone, alone_len = frontend(batch[i : i + 1, :n], lengths[i : i + 1])
        assert int(alone_len) == int(feat_lengths[i])
        torch.testing.assert_close(feats[i, : int(alone_len)], alone[0], rtol=1e-5, atol=1e-5)
        assert not feats[i, int(alone_len) :].any()


def test_the_defaults_are_unchanged_by_the_new_options():
    frontend = LogMelFeatures(FeatureConfig())
    torch.testing.assert_close(frontend.mel.spectrogram.window, torch.hann_window(400))
    fb = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 80, 16000, None, "htk")
    torch.testing.assert_close(frontend.mel.mel_scale.fb, fb)
    assert frontend.num_frames(16000) == 98


def reference_subsampling(sub: Conv2dSubsampling, feats: torch.Tensor) -> torch.Tensor:
    """One unpadded item through plain nn.Conv2d layers (their own zero padding)."""
    x = feats[None, None]  # (1, 1, T, F)
    for conv in sub.conv[::2]:
        x = torch.relu(conv(x))
    b, c, t, f = x.shape
    return sub.out(x.transpose(1, 2).reshape(b, t, c * f))[0]


@pytest.mark.parametrize("factor", [4, 8])
def test_padded_subsampling_is_nemos_formula_and_padding_invariant(factor):
    torch.manual_seed(0)
    sub = Conv2dSubsampling(80, 32, 16, factor, padding=1).eval()
    assert sub.out.in_features == 16 * conv_out_length(80, {4: 2, 8: 3}[factor], 1)
    assert conv_out_length(100, 1, 1) == 50 and conv_out_length(101, 1, 1) == 51
    lengths = torch.tensor([37, 64, 101])
    feats = torch.randn(3, 101, 80)
    feats[torch.arange(101)[None, :] >= lengths[:, None]] = 0.0  # as the front end pads
    with torch.no_grad():
        out, out_lengths = sub(feats, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = reference_subsampling(sub, feats[i, :n])
            assert alone.shape[0] == int(out_lengths[i])
            torch.testing.assert_close(out[i, : alone.shape[0]], alone, rtol=1e-5, atol=1e-5)


def test_padded_subsampling_export_path_equals_the_fast_path(monkeypatch):
    torch.manual_seed(1)
    sub = Conv2dSubsampling(80, 32, 16, 4, padding=1).eval()
    lengths = torch.tensor([40, 77])
    feats = torch.randn(2, 77, 80)
    feats[0, 40:] = 0
    with torch.no_grad():
        fast, _ = sub(feats, lengths)
        monkeypatch.setattr("asr.modules.subsampling.exporting", lambda: True)
        graph, graph_lengths = sub(feats, lengths)
    assert not exporting()
    for i, n in enumerate(conv_out_length(lengths, 2, 1).tolist()):
        torch.testing.assert_close(graph[i, :n], fast[i, :n], rtol=1e-5, atol=1e-5)
    assert torch.equal(graph_lengths, conv_out_length(lengths, 2, 1))


def test_xscaling_multiplies_the_blocks_input_by_sqrt_d():
    torch.manual_seed(2)
    config = EncoderConfig.preset("xs", xscaling=True)
    model = CtcModel(config, 10).eval()
    feats, lengths = torch.randn(1, 50, 80), torch.tensor([50])
    plain, _ = model.encoder.subsampling(feats, lengths)
    scaled, _ = model.encoder.subsample(feats, lengths)
    torch.testing.assert_close(scaled, plain * math.sqrt(config.d_model))


def test_shared_pos_bias_is_one_parameter_pair_that_trains_as_one():
    torch.manual_seed(3)
    shared = CtcModel(EncoderConfig.preset("xs", shared_pos_bias=True), 10)
    untied = CtcModel(EncoderConfig.preset("xs"), 10)
    first, second = (b.mhsa.attention for b in shared.encoder.blocks)
    assert first.pos_bias_u is second.pos_bias_u and first.pos_bias_v is second.pos_bias_v
    per_pair = 2 * first.pos_bias_u.numel()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(shared) == per_pair
    # one optimizer step moves both blocks' biases identically; a state dict round trip keeps
    # them one parameter
    optimizer = torch.optim.SGD(shared.parameters(), lr=0.1)
    log_probs, _ = shared(torch.randn(2, 60, 80), torch.tensor([60, 45]))
    log_probs.sum().backward()
    optimizer.step()
    assert torch.equal(first.pos_bias_u, second.pos_bias_u)
    again = CtcModel(EncoderConfig.preset("xs", shared_pos_bias=True), 10)
    again.load_state_dict(shared.state_dict())
    a, b = (blk.mhsa.attention for blk in again.encoder.blocks)
    assert a.pos_bias_u is b.pos_bias_u and torch.equal(a.pos_bias_u, first.pos_bias_u)


def test_options_are_checked_and_named():
    with pytest.raises(ValueError, match="encoder.subsampling_padding must be 0 or 1"):
        EncoderConfig(subsampling_padding=2)
    with pytest.raises(ValueError, match="features.window must be one of"):
        FeatureConfig(window="hamming")
    with pytest.raises(ValueError, match=r"features.preemphasis must be in \[0, 1\)"):
        FeatureConfig(preemphasis=1.5)
    with pytest.raises(ValueError, match="optim.freeze_blocks=9 is more than the encoder's 2"):
        load_config(None, ["optim.freeze_blocks=9"])


def test_freeze_blocks_and_encoder_lr_scale_shape_the_optimizer():
    from asr.tokenizer import CharTokenizer
    from asr.training.system import AsrSystem

    config = load_config(None, ["optim.freeze_blocks=1", "optim.encoder_lr_scale=0.1",
                                "optim.lr=1e-3"])  # fmt: skip
    import lightning.pytorch as pl

    system = AsrSystem(config, CharTokenizer("abc"))
    system.trainer = pl.Trainer(max_steps=10, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    optimizer = system.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    lr_of = {
        id(p): group["initial_lr"] for group in optimizer.param_groups for p in group["params"]
    }
    for name, param in system.model.named_parameters():
        frozen = name.startswith(("encoder.subsampling.", "encoder.blocks.0."))
        assert param.requires_grad != frozen and (id(param) in in_optimizer) != frozen, name
        if not frozen:
            assert lr_of[id(param)] == pytest.approx(1e-4 if name.startswith("encoder.") else 1e-3)

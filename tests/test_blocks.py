"""Conformer building blocks: subsampling lengths, conv module padding, masked batch norm,
feed-forward, and the global style tokens."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asr.modules.conv import ConformerConvModule, MaskedBatchNorm1d
from asr.modules.feed_forward import FeedForward
from asr.modules.masks import make_pad_mask
from asr.modules.style import GlobalStyleTokens, StyleEmbedAttention
from asr.modules.subsampling import Conv2dSubsampling


@pytest.mark.parametrize("factor", [4, 8])
def test_subsampling_length_formula_matches_actual_output_over_a_grid(factor: int) -> None:
    sub = Conv2dSubsampling(feat_dim=20, d_model=8, channels=4, factor=factor)
    for t in range(1, 130):
        expected = t
        for _ in range({4: 2, 8: 3}[factor]):
            expected = max((expected - 3) // 2 + 1, 0)
        if expected == 0:
            assert int(sub.output_lengths(torch.tensor([t]))) == 0
            continue
        x, lengths = sub(torch.randn(1, t, 20), torch.tensor([t]))
        assert x.shape[1] == expected == int(lengths[0]), t


def test_subsampling_rate_is_the_factor_for_long_inputs() -> None:
    sub4 = Conv2dSubsampling(80, 8, 4, 4)
    sub8 = Conv2dSubsampling(80, 8, 4, 8)
    t = torch.tensor([8000])
    assert abs(int(sub4.output_lengths(t)) - 2000) <= 2
    assert abs(int(sub8.output_lengths(t)) - 1000) <= 2


def test_conv_module_ignores_padding_in_training_and_eval() -> None:
    torch.manual_seed(0)
    conv = ConformerConvModule(16, kernel_size=7, dropout=0.0)
    x = torch.randn(2, 12, 16)
    lengths = torch.tensor([12, 8])
    pad = make_pad_mask(lengths)
    for train in (True, False):
        conv.train(train)
        garbage = x.clone()
        garbage[1, 8:] = 100.0
        a, b = conv(x, pad), conv(garbage, pad)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1, :8], b[1, :8])


@pytest.mark.parametrize("causal", [False, True])
def test_depthwise_conv_runs_in_fp32_under_bf16_autocast_and_for_bf16_models(causal: bool) -> None:
    """oneDNN's bf16 NHWC depthwise kernel stalls on a batch of one, so on CPU the depthwise
    conv always runs in fp32: under autocast its output is exactly the fp32 module's, and a
    bf16 module gives bf16 out of an fp32 computation of its bf16 inputs."""
    torch.manual_seed(0)
    module = ConformerConvModule(16, kernel_size=7, causal=causal).eval()
    x = torch.randn(2, 40, 16)
    weight, bias = module.depthwise.weight, module.depthwise.bias
    padding = (6, 0) if causal else (3, 3)
    with torch.no_grad():
        plain = module._depthwise(x, weight, bias, padding)
        with torch.autocast("cpu", torch.bfloat16):
            mixed = module._depthwise(x, weight, bias, padding)
        half = module._depthwise(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), padding)
        rounded_in = module._depthwise(
            x.bfloat16().float(), weight.bfloat16().float(), bias.bfloat16().float(), padding
        )
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    assert half.dtype == torch.bfloat16 and torch.equal(half, rounded_in.bfloat16())
    double = module.double()._depthwise(x.double(), weight.double(), bias.double(), padding)
    assert double.dtype == torch.float64  # float64 references stay float64


def test_masked_batch_norm_statistics_come_from_valid_frames_only() -> None:
    bn = MaskedBatchNorm1d(3, momentum=1.0)
    x = torch.randn(2, 5, 3)
    pad = make_pad_mask(torch.tensor([5, 2]))
    x[1, 2:] = 1e4
    y = bn(x, pad)
    valid = x[~pad]
    torch.testing.assert_close(bn.running_mean, valid.mean(0))
    torch.testing.assert_close(bn.running_var, valid.var(0, unbiased=True))
    torch.testing.assert_close(y[~pad].mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def test_masked_batch_norm_equals_torch_batch_norm_without_padding() -> None:
    torch.manual_seed(0)
    ours, ref = MaskedBatchNorm1d(6), nn.BatchNorm1d(6)
    x = torch.randn(3, 10, 6)
    torch.testing.assert_close(ours(x), ref(x.transpose(1, 2)).transpose(1, 2))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x.transpose(1, 2)).transpose(1, 2))


def test_conv_kernel_must_be_odd() -> None:
    with pytest.raises(ValueError, match="odd"):
        ConformerConvModule(8, kernel_size=4)


def test_feed_forward_activation_is_configurable() -> None:
    swish = FeedForward(8, activation="swish")
    leaky = FeedForward(8, activation="leaky_relu")
    assert isinstance(swish.net[2], nn.SiLU) and isinstance(leaky.net[2], nn.LeakyReLU)
    leaky.load_state_dict(swish.state_dict())
    x = torch.randn(2, 3, 8)
    assert not torch.allclose(swish.eval()(x), leaky.eval()(x))
    with pytest.raises(ValueError, match="activation"):
        FeedForward(8, activation="gelu2")


def test_style_attention_weights_sum_to_one_per_head() -> None:
    attn = StyleEmbedAttention(query_dim=12, key_dim=6, num_units=16, num_heads=4)
    out, weights = attn(torch.randn(3, 1, 12), torch.randn(3, 10, 6))
    assert out.shape == (3, 1, 16) and weights.shape == (3, 4, 1, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 1))
    assert (weights > 0).all()


def test_style_embedding_is_padding_invariant_and_depends_on_the_utterance() -> None:
    torch.manual_seed(0)
    gst = GlobalStyleTokens(feat_dim=20, d_model=16, num_tokens=5, num_heads=2).eval()
    a, b = torch.randn(1, 30, 20), torch.randn(1, 18, 20)
    batch = torch.zeros(2, 30, 20)
    batch[0], batch[1, :18] = a[0], b[0]
    emb, weights = gst(batch, torch.tensor([30, 18]))
    torch.testing.assert_close(emb[0], gst(a, torch.tensor([30]))[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb[1], gst(b, torch.tensor([18]))[0][0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(emb[0], emb[1])
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 1))

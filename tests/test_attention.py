"""Attention: the fast relative attention equals a naive (T, T) reference; plain MHA equals
a hand-written softmax attention; masks behave."""

from __future__ import annotations

import math

import pytest
import torch

from asr.modules.attention import (
    MultiHeadAttention,
    RelativeMultiHeadAttention,
    RelativePositionalEncoding,
    relative_shift,
    sinusoids,
)
from asr.modules.masks import make_pad_mask


def naive_relative_attention(
    attn: RelativeMultiHeadAttention, x: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Transformer-XL attention built from the explicit (T, T) matrix of distances i - j."""
    b, t, d = x.shape
    h, dh = attn.num_heads, attn.d_head
    q = attn.query(x).view(b, t, h, dh)
    k = attn.key(x).view(b, t, h, dh)
    v = attn.value(x).view(b, t, h, dh)
    distances = torch.arange(t).unsqueeze(1) - torch.arange(t).unsqueeze(0)  # (T, T): i - j
    r = attn.pos(sinusoids(distances.flatten(), d)).view(t, t, h, dh)  # W_r r_{i-j}
    content = torch.einsum("bihd,bjhd->bhij", q + attn.pos_bias_u, k)
    position = torch.einsum("bihd,ijhd->bhij", q + attn.pos_bias_v, r)
    scores = (content + position) / math.sqrt(dh)
    scores = scores.masked_fill(make_pad_mask(lengths, t)[:, None, None, :], float("-inf"))
    y = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(b, t, d)
    return attn.out(y)


@pytest.mark.parametrize("t", [1, 2, 7, 33, 130])
def test_relative_attention_equals_naive_reference_with_padding(t: int) -> None:
    torch.manual_seed(t)
    attn = RelativeMultiHeadAttention(d_model=32, num_heads=4).eval()
    x = torch.randn(3, t, 32)
    lengths = torch.tensor([t, max(1, t - 3), max(1, t // 2)])
    pos_emb = RelativePositionalEncoding(32)(t)
    fast = attn(x, pos_emb, make_pad_mask(lengths, t))
    torch.testing.assert_close(
        fast, naive_relative_attention(attn, x, lengths), atol=1e-5, rtol=1e-5
    )


def test_relative_shift_puts_distance_i_minus_j_at_i_j() -> None:
    t = 5
    # Column k of the unshifted scores stands for the distance (T-1) - k: store it as the value.
    distances = torch.arange(t - 1, -t, -1).float().expand(1, 1, t, 2 * t - 1)
    shifted = relative_shift(distances)
    expected = (torch.arange(t).unsqueeze(1) - torch.arange(t).unsqueeze(0)).float()
    torch.testing.assert_close(shifted[0, 0], expected)


def test_positional_table_grows_and_agrees_with_direct_encoding() -> None:
    enc = RelativePositionalEncoding(16)
    small = enc(3).clone()
    large = enc(50)
    torch.testing.assert_close(large, sinusoids(torch.arange(49, -50, -1), 16))
    torch.testing.assert_close(enc(3), small)
    assert large.shape == (99, 16)


def test_multi_head_attention_equals_manual_softmax_attention() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3).eval()
    q_in, kv = torch.randn(2, 4, 24), torch.randn(2, 6, 24)
    pad = make_pad_mask(torch.tensor([6, 2]), 6)
    out = mha(q_in, kv, kv, pad)
    q = mha.split_heads(mha.query(q_in))
    k, v = mha.split_heads(mha.key(kv)), mha.split_heads(mha.value(kv))
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    torch.testing.assert_close(out, mha.merge_heads(scores.softmax(-1) @ v), atol=1e-5, rtol=1e-5)


def test_padded_keys_get_no_attention() -> None:
    torch.manual_seed(1)
    attn = RelativeMultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 6, 16)
    pad = make_pad_mask(torch.tensor([4]), 6)
    pos = RelativePositionalEncoding(16)(6)
    base = attn(x, pos, pad)
    noisy = x.clone()
    noisy[:, 4:] = 1e3 * torch.randn(1, 2, 16)
    torch.testing.assert_close(attn(noisy, pos, pad)[:, :4], base[:, :4])


def test_zero_length_item_gives_finite_output() -> None:
    attn = RelativeMultiHeadAttention(16, 2).eval()
    pad = make_pad_mask(torch.tensor([0, 3]), 3)
    y = attn(torch.randn(2, 3, 16), RelativePositionalEncoding(16)(3), pad)
    assert torch.isfinite(y).all()


def test_head_count_must_divide_width() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(30, 4)

"""Multi-head attention: plain (Vaswani et al. 2017) and relative-position (Dai et al. 2019).

`MultiHeadAttention` is scaled dot-product attention over H heads. `RelativeMultiHeadAttention`
is the Transformer-XL form used by the Conformer (Gulati et al. 2020): the score between query i
and key j is

    (q_i + u) . k_j  +  (q_i + v) . W_r r_{i-j},   divided by sqrt(Dh),

with r_{i-j} a sinusoidal encoding of the relative distance i - j, W_r a learned projection and
u, v learned per-head biases. The position term is computed against the 2T-1 distances once,
(B, H, T, 2T-1), and moved into (B, H, T, T) by a zero-copy strided view (the "relative shift").
Both attentions hand the softmax and the value product to `scaled_dot_product_attention`, the
position term riding along as an additive bias.

Symbols: B batch, T time, D model width, H heads, Dh = D / H.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from asr.modules.masks import attn_bias_from_pad_mask


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions (N,) float -> (N, dim): [sin(p w_k), cos(p w_k)] interleaved, w_k = 1e4^(-2k/dim)."""
    freqs = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
        * (-math.log(10000.0) / dim)
    )  # (dim/2,)
    angles = positions.float().unsqueeze(1) * freqs  # (N, dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (N, dim)


class RelativePositionalEncoding(nn.Module):
    """Sinusoidal encodings of the relative distances T-1, T-2, ..., -(T-1), in that order.

    The table is cached and grown on demand; it is not a parameter and not saved.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if d_model % 2:
            raise ValueError(f"d_model must be even for sinusoidal encodings, got {d_model}")
        self.d_model = d_model
        self.register_buffer("table", torch.empty(0, d_model), persistent=False)

    def forward(self, length: int) -> torch.Tensor:
        """length T -> pos_emb (2T-1, D); row k encodes the distance (T-1) - k."""
        cached = (self.table.shape[0] + 1) // 2
        if cached < length:
            span = max(length, 2 * cached)
            distances = torch.arange(span - 1, -span, -1, device=self.table.device)
            self.table = sinusoids(distances, self.d_model)  # (2*span-1, D)
            cached = span
        start = cached - length
        return self.table[start : start + 2 * length - 1]


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2T-1) scores against distances T-1..-(T-1) -> (B, H, T, T) with [i, j] = d i-j.

    Entry [i, j] is column (T-1) - i + j of row i: a strided view, no copy, no loop over time.
    """
    b, h, t, n = scores.shape
    assert n == 2 * t - 1, f"expected 2T-1={2 * t - 1} distances, got {n}"
    scores = scores.contiguous()
    s_b, s_h, s_t, s_n = scores.stride()
    return scores.as_strided(
        size=(b, h, t, t),
        stride=(s_b, s_h, s_t - s_n, s_n),
        storage_offset=scores.storage_offset() + (t - 1) * s_n,
    )


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over H heads with key padding (Vaswani et al. 2017)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads, self.d_head = num_heads, d_model // num_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, h * dh))  # (B, T, D)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, Tq, D), key/value (B, Tk, D), key_pad_mask (B, Tk) -> (B, Tq, D)."""
        q = self.split_heads(self.query(query))  # (B, H, Tq, Dh)
        k = self.split_heads(self.key(key))  # (B, H, Tk, Dh)
        v = self.split_heads(self.value(value))  # (B, H, Tk, Dh)
        bias = None if key_pad_mask is None else attn_bias_from_pad_mask(key_pad_mask, q.dtype)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return self.merge_heads(y)


class RelativeMultiHeadAttention(MultiHeadAttention):
    """Transformer-XL relative-position self-attention (Dai et al. 2019, section 3.3)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__(d_model, num_heads, dropout)
        self.pos = nn.Linear(d_model, d_model, bias=False)  # W_r
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.d_head))  # content bias u
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.d_head))  # position bias v
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(
        self, x: torch.Tensor, pos_emb: torch.Tensor, pad_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, T, D), pos_emb (2T-1, D) from RelativePositionalEncoding, pad_mask (B, T).

        Returns (B, T, D).
        """
        t = x.shape[1]
        q = self.split_heads(self.query(x))  # (B, H, T, Dh)
        k = self.split_heads(self.key(x))  # (B, H, T, Dh)
        v = self.split_heads(self.value(x))  # (B, H, T, Dh)
        p = self.pos(pos_emb.to(x.dtype)).view(2 * t - 1, self.num_heads, self.d_head)
        p = p.permute(1, 2, 0)  # (H, Dh, 2T-1)
        q_v = q + self.pos_bias_v.unsqueeze(1)  # (B, H, T, Dh)
        bias = relative_shift(torch.matmul(q_v, p)) / math.sqrt(self.d_head)  # (B, H, T, T)
        if pad_mask is not None:  # fill, not add: adding to the dtype's minimum could give -inf
            bias = bias.masked_fill(pad_mask[:, None, None, :], torch.finfo(bias.dtype).min)
        q_u = q + self.pos_bias_u.unsqueeze(1)  # (B, H, T, Dh)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q_u, k, v, attn_mask=bias, dropout_p=drop)
        return self.merge_heads(y)

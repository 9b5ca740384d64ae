"""Global style tokens (Wang et al. 2018, "Style Tokens: Unsupervised Style Modeling, Control and
Transfer in End-to-End Speech Synthesis").

A reference encoder (strided Conv2d stack, then a GRU whose final state summarises the whole
utterance) turns features into one query vector; `StyleEmbedAttention` attends from it over a
bank of learned tokens squashed by tanh, giving a fixed-size utterance embedding. In the encoder
the embedding is added to every subsampled frame as utterance-level conditioning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from asr.modules.masks import make_pad_mask


class ReferenceEncoder(nn.Module):
    """feats (B, T, F), feat_lengths (B,) -> summary (B, hidden). Padding-invariant.

    Each Conv2d (kernel 3, stride 2, padding 1) is followed by ReLU and zeroing of padded frames,
    so a padded item sees exactly the zeros it would see alone; the GRU runs on packed sequences.
    """

    def __init__(self, feat_dim: int, hidden: int, channels: tuple[int, ...] = (32, 32, 64)):
        super().__init__()
        convs, in_ch, freq = [], 1, feat_dim
        for ch in channels:
            convs.append(nn.Conv2d(in_ch, ch, 3, stride=2, padding=1))
            in_ch, freq = ch, (freq - 1) // 2 + 1
        self.convs = nn.ModuleList(convs)
        self.gru = nn.GRU(in_ch * freq, hidden, batch_first=True)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> torch.Tensor:
        x, lengths = feats.unsqueeze(1), feat_lengths  # (B, 1, T, F)
        x = x.masked_fill(make_pad_mask(lengths, x.shape[2])[:, None, :, None], 0.0)
        for conv in self.convs:
            x, lengths = F.relu(conv(x)), (lengths - 1) // 2 + 1  # (B, C, T', F')
            x = x.masked_fill(make_pad_mask(lengths, x.shape[2])[:, None, :, None], 0.0)
        b, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(b, t, c * f)  # (B, T', C*F')
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        _, state = self.gru(packed)  # (1, B, hidden)
        return state.squeeze(0)


class StyleEmbedAttention(nn.Module):
    """Multi-head attention from queries onto style-token keys (Wang et al. 2018, section 3.2.2).

    Unlike `MultiHeadAttention` the keys have their own width and the attention weights are
    returned, since they are the style's interpretable mixture of tokens.
    """

    def __init__(self, query_dim: int, key_dim: int, num_units: int, num_heads: int) -> None:
        super().__init__()
        if num_units % num_heads:
            raise ValueError(f"num_units={num_units} is not divisible by num_heads={num_heads}")
        self.num_heads, self.d_head = num_heads, num_units // num_heads
        self.query = nn.Linear(query_dim, num_units, bias=False)
        self.key = nn.Linear(key_dim, num_units, bias=False)
        self.value = nn.Linear(key_dim, num_units, bias=False)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, Tq, Dq), key (B, Tk, Dk) -> (out (B, Tq, num_units), weights (B, H, Tq, Tk))."""
        b, tq, _ = query.shape
        tk = key.shape[1]
        q = self.query(query).view(b, tq, self.num_heads, self.d_head).transpose(1, 2)
        k = self.key(key).view(b, tk, self.num_heads, self.d_head).transpose(1, 2)
        v = self.value(key).view(b, tk, self.num_heads, self.d_head).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (B, H, Tq, Tk)
        weights = scores.softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, tq, self.num_heads * self.d_head)
        return out, weights


class GlobalStyleTokens(nn.Module):
    """feats (B, T, F), feat_lengths (B,) -> utterance embedding (B, D) from a learned token bank."""

    def __init__(self, feat_dim: int, d_model: int, num_tokens: int = 10, num_heads: int = 4):
        super().__init__()
        self.reference = ReferenceEncoder(feat_dim, d_model // 2)
        self.tokens = nn.Parameter(torch.randn(num_tokens, d_model // num_heads) * 0.5)
        self.attention = StyleEmbedAttention(d_model // 2, d_model // num_heads, d_model, num_heads)

    def forward(
        self, feats: torch.Tensor, feat_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (embedding (B, D), weights (B, H, 1, num_tokens))."""
        summary = self.reference(feats, feat_lengths).unsqueeze(1)  # (B, 1, D/2)
        keys = torch.tanh(self.tokens).unsqueeze(0).expand(feats.shape[0], -1, -1)  # (B, N, Dk)
        embedding, weights = self.attention(summary, keys)  # (B, 1, D)
        return embedding.squeeze(1), weights

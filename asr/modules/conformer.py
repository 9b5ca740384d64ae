"""The Conformer encoder (Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for
Speech Recognition").

Each block is a macaron sandwich: x + FF/2, + MHSA, + Conv, + FF/2, then LayerNorm, with
Transformer-XL relative-position self-attention (Dai et al. 2019). The encoder subsamples the
features 4x (or 8x) with convolutions first. `EncoderConfig` unpacks into modules here only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from asr.config import EncoderConfig
from asr.modules.attention import RelativeMultiHeadAttention, RelativePositionalEncoding
from asr.modules.conv import ConformerConvModule
from asr.modules.dropout import Dropout
from asr.modules.feed_forward import FeedForward
from asr.modules.masks import make_pad_mask
from asr.modules.style import GlobalStyleTokens
from asr.modules.subsampling import Conv2dSubsampling


class ConformerMultiHeadedSelfAttention(nn.Module):
    """Pre-LayerNorm, relative-position multi-head self-attention, dropout (residual branch)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_model)
        self.attention = RelativeMultiHeadAttention(d_model, num_heads, attn_dropout)
        self.dropout = Dropout(dropout)

    def forward(
        self, x: torch.Tensor, pos_emb: torch.Tensor, pad_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x (B, T, D), pos_emb (2T-1, D), pad_mask (B, T) -> (B, T, D)."""
        return self.dropout(self.attention(self.layer_norm(x), pos_emb, pad_mask))


class ConformerBlock(nn.Module):
    """x + FF/2 -> + MHSA -> + Conv -> + FF/2 -> LayerNorm (Gulati et al. 2020, equation 1)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ff_mult: int = 4,
        conv_kernel_size: int = 31,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        activation: str = "swish",
        conv_norm: str = "batch_norm",
    ) -> None:
        super().__init__()
        self.ff1 = FeedForward(d_model, ff_mult, activation, dropout)
        self.mhsa = ConformerMultiHeadedSelfAttention(d_model, num_heads, dropout, attn_dropout)
        self.conv = ConformerConvModule(d_model, conv_kernel_size, conv_norm, activation, dropout)
        self.ff2 = FeedForward(d_model, ff_mult, activation, dropout)
        self.final_norm = nn.LayerNorm(d_model)

    def forward(
        self, x: torch.Tensor, pos_emb: torch.Tensor, pad_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, T, D), pos_emb (2T-1, D), pad_mask (B, T) -> (B, T, D)."""
        x = torch.add(x, self.ff1(x), alpha=0.5)  # x + FF/2 in one pass
        x = x + self.mhsa(x, pos_emb, pad_mask)
        x = x + self.conv(x, pad_mask)
        x = torch.add(x, self.ff2(x), alpha=0.5)
        return self.final_norm(x)


class ConformerEncoder(nn.Module):
    """Conv2d subsampling, optional global style tokens, then N Conformer blocks."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.subsampling = Conv2dSubsampling(
            c.feat_dim, c.d_model, c.subsampling_channels, c.subsampling_factor
        )
        self.input_dropout = Dropout(c.dropout)
        self.pos_enc = RelativePositionalEncoding(c.d_model)
        self.style = (
            GlobalStyleTokens(c.feat_dim, c.d_model, c.num_style_tokens, c.style_token_heads)
            if c.style_tokens
            else None
        )
        self.blocks = nn.ModuleList(
            ConformerBlock(
                c.d_model,
                c.num_heads,
                c.ff_mult,
                c.conv_kernel_size,
                c.dropout,
                c.attn_dropout,
                c.activation,
                c.conv_norm,
            )
            for _ in range(c.num_layers)
        )

    def output_lengths(self, feat_lengths: torch.Tensor) -> torch.Tensor:
        """Frames out for frames in: T' = floor((T - 3) / 2) + 1 applied 2 (4x) or 3 (8x) times."""
        return self.subsampling.output_lengths(feat_lengths)

    def forward(
        self,
        feats: torch.Tensor,
        feat_lengths: torch.Tensor,
        after_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), feat_lengths (B,) -> (out (B, T', D), out_lengths (B,)).

        Padded output frames (t >= out_lengths[b]) are zero. `after_block`: see `forward_blocks`.
        """
        x, out_lengths = self.subsampling(feats, feat_lengths)  # (B, T', D)
        if self.style is not None:
            embedding, _ = self.style(feats, feat_lengths)  # (B, D)
            x = x + embedding.unsqueeze(1)
        x = self.forward_blocks(self.input_dropout(x), out_lengths, after_block)
        return x, out_lengths

    def forward_blocks(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        after_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The Conformer blocks alone: x (B, T', D) after subsampling, lengths (B,) -> (B, T', D).

        `after_block(i, x)`, if given, sees the output of block i (1-based, (B, T', D)) and
        returns the input of the next one: the hook of intermediate CTC and self-conditioning.
        Padded output frames (t >= lengths[b]) are zero.
        """
        pad_mask = make_pad_mask(lengths, x.shape[1])  # (B, T')
        pos_emb = self.pos_enc(x.shape[1])  # (2T'-1, D)
        for i, block in enumerate(self.blocks, start=1):
            x = block(x, pos_emb, pad_mask)
            if after_block is not None and i < len(self.blocks):
                x = after_block(i, x)
        return x.masked_fill(pad_mask.unsqueeze(-1), 0.0)

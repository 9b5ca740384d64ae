"""The Conformer encoder (Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for
Speech Recognition").

Each block is a macaron sandwich: x + FF/2, + MHSA, + Conv, + FF/2, then LayerNorm, with
Transformer-XL relative-position self-attention (Dai et al. 2019). The encoder subsamples the
features 4x (or 8x) with convolutions first. `EncoderConfig` unpacks into modules here only.

Streaming (WeNet's U2, Zhang et al. 2020): with `chunk` frames the encoder limits each frame's
attention to its own chunk and `left_chunks` chunks before it (`masks.chunk_mask`), and a model
built with `causal_conv` has no convolution that looks ahead, and one built with `chunk_conv`
(dynamic chunk convolution, Li et al. 2023) convolves each chunk with zeros past its end, so no
output depends on audio after the end of its chunk; at full context a `chunk_conv` model is an
offline model, centred convolutions and all. `dynamic_chunk_training` draws the chunk size per
batch in training (full context half the time by default), so one model decodes at any chunk
size.
`forward_chunk` runs one chunk with the cached keys/values and convolution inputs of the chunks
before it, carried as fixed-structure tensors (`StreamState`: what the exported ONNX chunk graph
takes and returns); it gives what `forward(..., chunk=C, left_chunks=L)` gives for the same
frames (tests/test_streaming.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from asr.config import EncoderConfig
from asr.modules.attention import RelativeMultiHeadAttention, RelativePositionalEncoding
from asr.modules.conv import ConformerConvModule
from asr.modules.dropout import Dropout
from asr.modules.feed_forward import FeedForward
from asr.modules.masks import (
    attention_bias,
    attn_bias_from_pad_mask,
    chunk_mask,
    frames_from,
    make_pad_mask,
)
from asr.modules.style import GlobalStyleTokens
from asr.modules.subsampling import Conv2dSubsampling

# `chunk=FULL_CONTEXT`: full context even in training with dynamic chunks (no draw).
FULL_CONTEXT = 0


class ConformerMultiHeadedSelfAttention(nn.Module):
    """Pre-LayerNorm, relative-position multi-head self-attention, dropout (residual branch)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_model)
        self.attention = RelativeMultiHeadAttention(d_model, num_heads, attn_dropout)
        self.dropout = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        pad_mask: torch.Tensor | None,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, D), pos_emb (2T-1, D), pad_mask (B, T) or attn_bias -> (B, T, D)."""
        return self.dropout(self.attention(self.layer_norm(x), pos_emb, pad_mask, attn_bias))


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
        causal_conv: bool = False,
        chunk_conv: bool = False,
    ) -> None:
        super().__init__()
        self.ff1 = FeedForward(d_model, ff_mult, activation, dropout)
        self.mhsa = ConformerMultiHeadedSelfAttention(d_model, num_heads, dropout, attn_dropout)
        self.conv = ConformerConvModule(
            d_model, conv_kernel_size, conv_norm, activation, dropout, causal=causal_conv,
            chunked=chunk_conv,
        )  # fmt: skip
        self.ff2 = FeedForward(d_model, ff_mult, activation, dropout)
        self.final_norm = nn.LayerNorm(d_model)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        pad_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        chunk: int | None = None,
    ) -> torch.Tensor:
        """x (B, T, D), pos_emb (2T-1, D), pad_mask (B, T), attn_bias (see
        `masks.attention_bias`; default: from pad_mask) -> (B, T, D). `chunk`: the chunk size
        attn_bias limits attention to, which a chunked convolution follows too."""
        x = torch.add(x, self.ff1(x), alpha=0.5)  # x + FF/2 in one pass
        x = x + self.mhsa(x, pos_emb, pad_mask, attn_bias)
        x = x + self.conv(x, pad_mask, chunk)
        x = torch.add(x, self.ff2(x), alpha=0.5)
        return self.final_norm(x)

    def forward_chunk(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        attn_bias: torch.Tensor,
        att_cache: torch.Tensor,
        cnn_cache: torch.Tensor,
        emit: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Streaming, evaluation: one chunk x (B, C, D) after L cache slots, pos_emb
        (2(L+C)-1, D), attn_bias (B, 1, 1, L+C) masking the empty slots, att_cache
        (2, B, H, L, Dh) keys and values, cnn_cache (B, P, D) the depthwise convolution's
        last inputs (P = `EncoderConfig.conv_cache_frames`) -> (B, C, D) and the next chunk's
        att_cache and cnn_cache (same shapes), taken after the first `emit` frames (default C:
        all of them; the rest are look-ahead)."""
        x = torch.add(x, self.ff1(x), alpha=0.5)
        mhsa = self.mhsa
        attn, att_cache = mhsa.attention.forward_chunk(
            mhsa.layer_norm(x), pos_emb, attn_bias, att_cache, emit
        )
        x = x + mhsa.dropout(attn)
        conv, cnn_cache = self.conv.forward_chunk(x, cnn_cache, emit)
        x = x + conv
        x = torch.add(x, self.ff2(x), alpha=0.5)
        return self.final_norm(x), att_cache, cnn_cache


class StreamState(NamedTuple):
    """What a streamed chunk hands to the next: fixed-structure tensors, the inputs and outputs
    of the exported chunk graph as they are (`asr.export.onnx`). N blocks, L cache slots.

    att_cache (N, 2, B, H, L, Dh): each block's attention keys ([:, 0]) and values ([:, 1]) of
        the last L frames, the valid ones at the right end (slots before them are masked);
    cnn_cache (N, B, P, D): each block's last P depthwise convolution inputs (zeros at the
        start: the left padding), P = K-1 (causal) or K//2 (chunk convolution);
    cache_len (B,) int64: how many of the L slots hold frames (min(L, frames so far)).
    """

    att_cache: torch.Tensor
    cnn_cache: torch.Tensor
    cache_len: torch.Tensor


class ConformerEncoder(nn.Module):
    """Conv2d subsampling, optional global style tokens, then N Conformer blocks."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.subsampling = Conv2dSubsampling(
            c.feat_dim, c.d_model, c.subsampling_channels, c.subsampling_factor,
            c.subsampling_padding,
        )  # fmt: skip
        self.xscale = math.sqrt(c.d_model) if c.xscaling else None
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
                c.causal_conv,
                c.chunk_conv,
            )
            for _ in range(c.num_layers)
        )
        if c.shared_pos_bias:  # one (u, v) pair, the same Parameter in every block
            first = self.blocks[0].mhsa.attention
            for block in self.blocks[1:]:
                block.mhsa.attention.pos_bias_u = first.pos_bias_u
                block.mhsa.attention.pos_bias_v = first.pos_bias_v

    def output_lengths(self, feat_lengths: torch.Tensor) -> torch.Tensor:
        """Frames out for frames in: T' = floor((T - 3) / 2) + 1 applied 2 (4x) or 3 (8x) times."""
        return self.subsampling.output_lengths(feat_lengths)

    def forward(
        self,
        feats: torch.Tensor,
        feat_lengths: torch.Tensor,
        after_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
        chunk: int | None = None,
        left_chunks: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), feat_lengths (B,) -> (out (B, T', D), out_lengths (B,)).

        Padded output frames (t >= out_lengths[b]) are zero. `after_block`: see `forward_blocks`.
        `chunk` (frames after subsampling) and `left_chunks` limit attention as in streaming;
        None: full context, or in training with `dynamic_chunk_training` a size drawn per batch;
        `FULL_CONTEXT` (0): full context, never drawn (dual-mode training's full pass).
        """
        x, out_lengths = self.subsample(feats, feat_lengths)  # (B, T', D)
        if self.style is not None:
            embedding, _ = self.style(feats, feat_lengths)  # (B, D)
            x = x + embedding.unsqueeze(1)
        if chunk is None and self.training and self.config.dynamic_chunk_training:
            chunk = self.draw_chunk(x.shape[1])
        elif chunk == FULL_CONTEXT:
            chunk = None
        x = self.forward_blocks(self.input_dropout(x), out_lengths, after_block, chunk, left_chunks)
        return x, out_lengths

    def subsample(
        self, feats: torch.Tensor, feat_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks' input: subsampled frames (B, T', D), times sqrt(D) with `xscaling`."""
        x, out_lengths = self.subsampling(feats, feat_lengths)
        return (x if self.xscale is None else x * self.xscale), out_lengths

    def draw_chunk(self, length: int, full_context_prob: float | None = None) -> int | None:
        """A chunk size for one training batch of `length` frames: full context (None) with
        probability `full_context_prob` (the config's unless given), else uniform in
        `min_chunk_frames`..`max_chunk_frames` (WeNet's rule with the defaults 0.5 and 1..25).
        Uses torch's generator."""
        c = self.config
        p = c.full_context_prob if full_context_prob is None else full_context_prob
        if length < 2 or torch.rand(()).item() < p:
            return None
        return int(torch.randint(c.min_chunk_frames, c.max_chunk_frames + 1, ()).item())

    def forward_blocks(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        after_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
        chunk: int | None = None,
        left_chunks: int = -1,
    ) -> torch.Tensor:
        """The Conformer blocks alone: x (B, T', D) after subsampling, lengths (B,) -> (B, T', D).

        `after_block(i, x)`, if given, sees the output of block i (1-based, (B, T', D)) and
        returns the input of the next one: the hook of intermediate CTC and self-conditioning.
        `chunk`/`left_chunks`: see `forward`. Padded output frames (t >= lengths[b]) are zero.
        """
        pad_mask = make_pad_mask(lengths, x.shape[1])  # (B, T')
        pos_emb = self.pos_enc(x.shape[1])  # (2T'-1, D)
        blocked = None if chunk is None else chunk_mask(x.shape[1], chunk, left_chunks, x.device)
        bias = attention_bias(pad_mask, x.dtype, blocked)  # computed once for all blocks
        for i, block in enumerate(self.blocks, start=1):
            x = block(x, pos_emb, pad_mask, bias, chunk)
            if after_block is not None and i < len(self.blocks):
                x = after_block(i, x)
        return x.masked_fill(pad_mask.unsqueeze(-1), 0.0)

    def initial_state(
        self, batch: int = 1, cache_frames: int = 0, device: torch.device | str = "cpu"
    ) -> StreamState:
        """The state before the first chunk: `cache_frames` empty slots (the left context kept:
        L), zero convolution inputs, float32."""
        c = self.config
        d_head = c.d_model // c.num_heads
        return StreamState(
            torch.zeros(c.num_layers, 2, batch, c.num_heads, cache_frames, d_head, device=device),
            torch.zeros(c.num_layers, batch, c.conv_cache_frames, c.d_model, device=device),
            torch.zeros(batch, dtype=torch.long, device=device),
        )

    def forward_chunk(
        self,
        feats: torch.Tensor,
        state: StreamState,
        after_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
        emit: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, StreamState]:
        """Streaming, evaluation: the feature frames feats (B, T, F) of one chunk of C encoder
        frames (T = stride (C-1) + span: they overlap the previous chunk's by span - stride) and
        the state after the chunks before it -> (out (B, C, D), the state after its first E
        frames).

        Each block attends over the L cache slots (the empty ones masked) and the chunk; its
        convolution continues from the cached inputs. `after_block`: see `forward_blocks`.
        `emit` (E, an int or a 0-dim int64 tensor; default C): with E < C the last C - E frames
        are look-ahead (latency-controlled chunks, as in LC-BLSTM: Zhang et al. 2016, "Highway
        Long Short-Term Memory RNNs for Distant Speech Recognition"): the first E frames see
        them; they are left out of the state, their outputs are provisional, and the next chunk
        starts with them.
        """
        if self.style is not None:
            raise ValueError("models with global style tokens cannot stream (they summarize "
                             "the whole utterance first)")  # fmt: skip
        b, t, _ = feats.shape
        x, _ = self.subsample(feats, torch.full((b,), t, device=feats.device))  # (B, C, D)
        c, slots = x.shape[1], state.att_cache.shape[4]
        e = c if emit is None else emit
        pos_emb = self.pos_enc(slots + c)  # (2(L+C)-1, D)
        positions = torch.arange(slots + c, device=x.device)  # (L+C,)
        pad_mask = positions[None, :] < (slots - state.cache_len)[:, None]  # (B, L+C): empty
        bias = attn_bias_from_pad_mask(pad_mask, x.dtype)  # (B, 1, 1, L+C)
        att_caches, cnn_caches = [], []
        for i, block in enumerate(self.blocks, start=1):
            x, att, cnn = block.forward_chunk(
                x, pos_emb, bias, state.att_cache[i - 1], state.cnn_cache[i - 1], e
            )
            att_caches.append(att)
            cnn_caches.append(cnn)
            if after_block is not None and i < len(self.blocks):
                x = after_block(i, x)
        cache_len = (~frames_from(pad_mask, 1, e, slots)).sum(-1)  # (B,): min(L, cache_len + E)
        return x, StreamState(torch.stack(att_caches), torch.stack(cnn_caches), cache_len)

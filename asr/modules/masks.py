"""Padding masks: the one place where lengths become masks and masks change convention.

`pad_mask` is True at padded positions; attention takes it as an additive bias
(`attn_bias_from_pad_mask`), 0 where a key may be attended to. Streaming models also limit each
frame to its own chunk and a number of chunks before it (`chunk_mask`, WeNet's U2 scheme:
Zhang et al. 2020, "Unified Streaming and Non-streaming Two-pass End-to-end Model").
"""

from __future__ import annotations

import torch


def make_pad_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Lengths (B,) -> pad_mask (B, T), True where the frame is padding."""
    max_len = int(lengths.max()) if max_len is None else max_len
    positions = torch.arange(max_len, device=lengths.device)  # (T,)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)  # (B, T)


def attn_bias_from_pad_mask(pad_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Key pad_mask (B, T) -> additive bias (B, 1, 1, T): 0 for valid keys, -max/2 for padding.

    Half the dtype's largest value rather than -inf or the minimum: adding any finite score
    cannot overflow to -inf, so a fully padded row (a zero-length item) gives a uniform softmax
    instead of NaN, while a padded key next to any valid one still gets exactly zero weight.
    """
    bias = torch.zeros(pad_mask.shape, dtype=dtype, device=pad_mask.device)
    bias.masked_fill_(pad_mask, -0.5 * torch.finfo(dtype).max)
    return bias[:, None, None, :]


def chunk_mask(
    length: int, chunk: int, left_chunks: int = -1, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(T, T) bool, True where query frame i may NOT see key frame j: j lies in a later chunk
    than i, or more than `left_chunks` chunks before i's (`left_chunks` < 0: all before).

    Chunks are `chunk` frames long from frame 0; frame i belongs to chunk i // chunk.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 frame, got {chunk}")
    index = torch.arange(length, device=device) // chunk  # (T,)
    query, key = index[:, None], index[None, :]  # (T, 1), (1, T)
    blocked = key > query
    if left_chunks >= 0:
        blocked |= key < query - left_chunks
    return blocked


def attention_bias(
    pad_mask: torch.Tensor | None, dtype: torch.dtype, blocked: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Key padding (B, T) and a (T, T) `chunk_mask` as one additive bias: (B, 1, 1, T) for
    padding alone, (B, 1, T, T) or (1, 1, T, T) with a chunk mask; None when both are None."""
    bias = None if pad_mask is None else attn_bias_from_pad_mask(pad_mask, dtype)
    if blocked is None:
        return bias
    if bias is None:
        bias = torch.zeros(1, 1, 1, blocked.shape[-1], dtype=dtype, device=blocked.device)
    return bias.masked_fill(blocked, -0.5 * torch.finfo(dtype).max)  # (B or 1, 1, T, T)


def frames_from(x: torch.Tensor, dim: int, start: int | torch.Tensor, count: int) -> torch.Tensor:
    """`count` frames of `x` along `dim` from `start` on (an int, or a 0-dim int64 tensor: an
    input of an exported graph, where a slice would need its value at export time)."""
    index = torch.arange(count, device=x.device) + start
    return x.index_select(dim, index)

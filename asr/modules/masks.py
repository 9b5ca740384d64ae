"""Padding masks: the one place where lengths become masks and masks change convention.

`pad_mask` is True at padded positions; attention takes it as an additive bias
(`attn_bias_from_pad_mask`), 0 where a key may be attended to.
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

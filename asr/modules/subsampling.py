"""Convolutional subsampling of log-mel features (Gulati et al. 2020, section 2).

Two (4x) or three (8x) Conv2d layers with kernel 3 and stride 2 over time and frequency, no
padding, then a linear projection to d_model. Output frame t only sees input frames inside the
item's valid length, so padding never changes valid outputs.
"""

from __future__ import annotations

import torch
from torch import nn

KERNEL, STRIDE = 3, 2


def conv_out_length(length: torch.Tensor | int, num_convs: int) -> torch.Tensor | int:
    """Frames after `num_convs` unpadded kernel-3 stride-2 convs: L -> (L - 3) // 2 + 1, floor 0."""
    for _ in range(num_convs):
        length = (length - KERNEL) // STRIDE + 1
        length = length.clamp(min=0) if isinstance(length, torch.Tensor) else max(length, 0)
    return length


class Conv2dSubsampling(nn.Module):
    """(B, T, F) features -> (B, T', D) with T' = conv_out_length(T), factor 4 or 8."""

    def __init__(self, feat_dim: int, d_model: int, channels: int, factor: int = 4) -> None:
        super().__init__()
        if factor not in (4, 8):
            raise ValueError(f"subsampling factor must be 4 or 8, got {factor}")
        self.num_convs = {4: 2, 8: 3}[factor]
        layers: list[nn.Module] = []
        in_channels, freq = 1, feat_dim
        for _ in range(self.num_convs):
            layers += [nn.Conv2d(in_channels, channels, KERNEL, STRIDE), nn.ReLU()]
            in_channels, freq = channels, conv_out_length(freq, 1)
        if freq < 1:
            raise ValueError(f"feat_dim={feat_dim} is too small for {factor}x subsampling")
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(channels * freq, d_model)

    def output_lengths(self, feat_lengths: torch.Tensor) -> torch.Tensor:
        return conv_out_length(feat_lengths, self.num_convs)

    def forward(
        self, feats: torch.Tensor, feat_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), feat_lengths (B,) -> (x (B, T', D), out_lengths (B,))."""
        x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))  # (B, T', D)
        return x, self.output_lengths(feat_lengths)

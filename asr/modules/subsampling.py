"""Convolutional subsampling of log-mel features (Gulati et al. 2020, section 2).

Two (4x) or three (8x) Conv2d layers with kernel 3 and stride 2 over time and frequency, then
a linear projection to d_model. Without padding (ours) output frame t only sees input frames
inside the item's valid length, so padding never changes valid outputs. With `padding=1`
(NeMo's "striding" subsampling) each convolution pads p zero frames and bins on both sides,
and the frames past each item's length are zeroed before every convolution, so a frame at the
edge sees zeros whatever the batch holds: padding never changes valid outputs either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asr.modules.attention import exporting

KERNEL, STRIDE = 3, 2


def conv_out_length(
    length: torch.Tensor | int, num_convs: int, padding: int = 0
) -> torch.Tensor | int:
    """Frames after `num_convs` kernel-3 stride-2 convs with `padding` zeros on each side:
    L -> (L + 2 padding - 3) // 2 + 1 each, floor 0."""
    for _ in range(num_convs):
        length = (length + 2 * padding - KERNEL) // STRIDE + 1
        length = length.clamp(min=0) if isinstance(length, torch.Tensor) else max(length, 0)
    return length


@dataclass(frozen=True)
class SubsamplingGeometry:
    """How output frames relate to feature frames: the one place that knows the arithmetic.

    `factor` 4 or 8 (2 or 3 convolutions), `padding` zeros on each side of each convolution.
    `stride` feature frames per output frame; `span` feature frames one output frame sees
    (7 for 4x, 15 for 8x); `right_context` of those after its first frame (`span - 1`).
    """

    factor: int
    padding: int = 0

    def __post_init__(self) -> None:
        if self.factor not in (4, 8):
            raise ValueError(f"subsampling factor must be 4 or 8, got {self.factor}")

    @property
    def num_convs(self) -> int:
        return {4: 2, 8: 3}[self.factor]

    @property
    def stride(self) -> int:
        return STRIDE**self.num_convs

    @property
    def span(self) -> int:
        return 1 + (KERNEL - 1) * (self.stride - 1) // (STRIDE - 1)

    @property
    def right_context(self) -> int:
        return self.span - 1

    def output_lengths(self, feat_lengths: torch.Tensor | int) -> torch.Tensor | int:
        """Output frames for `feat_lengths` feature frames (tensor or int)."""
        return conv_out_length(feat_lengths, self.num_convs, self.padding)


class Conv2dSubsampling(nn.Module):
    """(B, T, F) features -> (B, T', D) with T' = conv_out_length(T), factor 4 or 8."""

    def __init__(
        self, feat_dim: int, d_model: int, channels: int, factor: int = 4, padding: int = 0
    ) -> None:
        super().__init__()
        self.geometry = SubsamplingGeometry(factor, padding)
        self.num_convs = self.geometry.num_convs
        self.padding = padding
        layers: list[nn.Module] = []
        in_channels, freq = 1, feat_dim
        for _ in range(self.num_convs):
            layers += [nn.Conv2d(in_channels, channels, KERNEL, STRIDE, padding), nn.ReLU()]
            in_channels, freq = channels, conv_out_length(freq, 1, padding)
        if freq < 1:
            raise ValueError(f"feat_dim={feat_dim} is too small for {factor}x subsampling")
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(channels * freq, d_model)

    def output_lengths(self, feat_lengths: torch.Tensor) -> torch.Tensor:
        return self.geometry.output_lengths(feat_lengths)

    def _mask(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """With padding: x (B, C, T, F) with frames t >= lengths[b] zeroed (no-op without)."""
        if not self.padding:
            return x
        keep = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]  # (B, T)
        return x * keep[:, None, :, None].to(x.dtype)

    def forward(
        self, feats: torch.Tensor, feat_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), feat_lengths (B,) -> (x (B, T', D), out_lengths (B,))."""
        lengths = feat_lengths
        if exporting():  # plain NCHW convolutions: an ONNX graph has no channels-last views, and
            # the permutes below would become copies of the largest tensors of the encoder
            x = feats.unsqueeze(1)  # (B, 1, T, F)
            for conv in self.conv[::2]:
                x = torch.relu(conv(self._mask(x, lengths)))
                lengths = conv_out_length(lengths, 1, self.padding)
            b, c, t, f = x.shape  # (B, C, T', F')
            x = self.out(x.transpose(1, 2).reshape(b, t, c * f))  # (C, F') order: out's own
            return x, lengths
        x = self._first_conv(self._mask(feats.unsqueeze(1), lengths).squeeze(1))  # (B, C, T1, F1)
        for conv in self.conv[2::2]:  # the later convs, on channels-last input (oneDNN NHWC)
            lengths = conv_out_length(lengths, 1, self.padding)
            x = torch.relu(conv(self._mask(x, lengths)))  # (B, C, T', F')
        b, c, t, f = x.shape
        # Channels-last memory is (B, T', F', C): flatten (F', C) as it lies, and order the
        # projection's input features the same way, instead of copying x to (B, T', C, F').
        weight = self.out.weight.view(-1, c, f).transpose(1, 2).reshape(-1, f * c)  # (D, F'C)
        x = F.linear(x.permute(0, 2, 3, 1).reshape(b, t, f * c), weight, self.out.bias)
        return x, self.output_lengths(feat_lengths)  # (B, T', D)

    def _first_conv(self, feats: torch.Tensor) -> torch.Tensor:
        """The 1-channel first conv + ReLU as one matmul over 3x3 patches: (B, C, T1, F1).

        With a single input channel a convolution kernel does 9 multiply-adds per output and is
        bound by writing its output; a matmul into (B, T1, F1, C) writes it once, already in
        the channels-last layout the next conv wants.
        """
        conv = self.conv[0]
        if self.padding:
            p = self.padding
            feats = F.pad(feats, (p, p, p, p))  # (B, T + 2p, F + 2p)
        b = feats.shape[0]
        patches = feats.unfold(1, KERNEL, STRIDE).unfold(2, KERNEL, STRIDE)  # (B, T1, F1, 3, 3)
        t1, f1 = patches.shape[1], patches.shape[2]
        weight = conv.weight.view(conv.out_channels, KERNEL * KERNEL)  # (C, 9)
        y = F.linear(patches.reshape(b, t1, f1, KERNEL * KERNEL), weight, conv.bias)
        return torch.relu_(y).permute(0, 3, 1, 2)  # (B, C, T1, F1)

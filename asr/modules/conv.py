"""The Conformer convolution module (Gulati et al. 2020, section 2.2, figure 2).

LayerNorm -> pointwise conv to 2D -> GLU -> depthwise conv (odd kernel) -> BatchNorm (or
LayerNorm) -> Swish -> pointwise conv -> dropout. Padded frames are zeroed before the depthwise
convolution and the batch norm statistics are taken over valid frames only, so padding never
leaks into valid frames, in training or in evaluation. Two ways to stream:
- `causal=True` pads the depthwise convolution on the left only, so no output frame depends on
  a later one; streaming carries the last K-1 frames of its input from chunk to chunk.
- `chunked=True` (dynamic chunk convolution, Li et al. 2023) keeps the centred convolution of an
  offline model, and when called with a chunk size each chunk sees the K//2 input frames before
  it and zeros past its own end: at full context it is the offline convolution, in chunks no
  output depends on a later chunk. Streaming carries the last K//2 input frames.
`forward_chunk` runs one streamed chunk with that cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asr.modules.dropout import Dropout
from asr.modules.feed_forward import make_activation
from asr.modules.masks import frames_from


class MaskedBatchNorm1d(nn.Module):
    """Batch norm over channels whose training statistics ignore padded frames.

    Same parameters, buffers and update rule as `nn.BatchNorm1d` (momentum 0.1, unbiased running
    variance), but the mean and variance are taken over the valid (B, T) positions only.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C), pad_mask (B, T) -> (B, T, C)."""
        if self.training and self._unpadded_cpu_float32(x, pad_mask):
            # torch's fused kernel: the same statistics and update rule, 7x faster on CPU
            return F.batch_norm(
                x.reshape(-1, x.shape[-1]), self.running_mean, self.running_var, self.weight,
                self.bias, training=True, momentum=self.momentum, eps=self.eps,
            ).view_as(x)  # fmt: skip
        if self.training:
            valid = x.flatten(0, 1) if pad_mask is None else x[~pad_mask]  # (N, C)
            n = valid.shape[0]
            if n > 1:
                var, mean = torch.var_mean(valid.float(), dim=0, correction=0)
                with torch.no_grad():
                    unbiased = var * (n / (n - 1))
                    self.running_mean.lerp_(mean, self.momentum)
                    self.running_var.lerp_(unbiased, self.momentum)
            else:  # nothing to estimate from: fall back to running statistics
                mean, var = self.running_mean, self.running_var
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)  # (C,)
        return (x * scale + (self.bias - mean * scale)).to(x.dtype)

    @staticmethod
    def _unpadded_cpu_float32(x: torch.Tensor, pad_mask: torch.Tensor | None) -> bool:
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.shape[0] * x.shape[1] < 2:
            return False
        return pad_mask is None or not bool(pad_mask.any())  # a sync only on CPU: free


class ConformerConvModule(nn.Module):
    """Gated pointwise conv, depthwise conv over time, norm, Swish, pointwise conv.

    Returns the residual branch only. `norm` is "batch_norm" (padding-aware) or "layer_norm".
    """

    def __init__(
        self,
        d_model: int,
        kernel_size: int = 31,
        norm: str = "batch_norm",
        activation: str = "swish",
        dropout: float = 0.1,
        causal: bool = False,
        chunked: bool = False,
    ) -> None:
        super().__init__()
        if causal and chunked:
            raise ValueError("a convolution module is causal or chunked, not both")
        self.causal, self.chunked = causal, chunked
        if kernel_size % 2 == 0:
            raise ValueError(
                f"conv_kernel_size must be odd to keep frames centred, got {kernel_size}"
            )
        if norm not in ("batch_norm", "layer_norm"):
            raise ValueError(f"unknown conv norm {norm!r}; choose 'batch_norm' or 'layer_norm'")
        self.layer_norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)  # a 1x1 conv, batch-first
        self.glu = nn.GLU(dim=-1)
        self.depthwise = nn.Conv1d(
            d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model
        )
        self.norm = MaskedBatchNorm1d(d_model) if norm == "batch_norm" else nn.LayerNorm(d_model)
        self.activation = make_activation(activation)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)

    def forward(
        self, x: torch.Tensor, pad_mask: torch.Tensor | None = None, chunk: int | None = None
    ) -> torch.Tensor:
        """x (B, T, D), pad_mask (B, T) -> (B, T, D). `chunk` (frames): a chunked module
        convolves each chunk of that many frames as a stream would; others ignore it."""
        x = self.glu(self.pointwise_in(self.layer_norm(x)))  # (B, T, D)
        if pad_mask is not None:
            x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        k = self.depthwise.kernel_size[0]
        padding = (k - 1, 0) if self.causal else (k // 2, k // 2)
        return self._conv_norm_out(x, pad_mask, padding, chunk if self.chunked else None)

    def forward_chunk(
        self, x: torch.Tensor, cache: torch.Tensor, emit: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming (causal or chunked, evaluation): x (B, C, D) and the last P frames
        (B, P, D) of the previous chunks' depthwise input, P = K-1 (causal) or K//2 (chunked),
        zeros at the start as the left padding -> (out (B, C, D), the cache for the next chunk
        (B, P, D): the last P inputs up to frame `emit` of the chunk, default C). A chunked
        module pads the chunk's end with K//2 zero frames, as `forward(..., chunk=C)` does."""
        assert (self.causal or self.chunked) and not self.training, (
            "forward_chunk: causal or chunked models in eval mode"
        )
        e, p = (x.shape[1] if emit is None else emit), cache.shape[1]
        x = self.glu(self.pointwise_in(self.layer_norm(x)))  # (B, C, D)
        x = torch.cat([cache, x], dim=1)  # (B, P+C, D)
        right = self.depthwise.kernel_size[0] // 2 if self.chunked else 0
        return self._conv_norm_out(x, None, (0, right)), frames_from(x, 1, e, p)  # P before e

    def _conv_norm_out(
        self,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None,
        padding: tuple[int, int],
        chunk: int | None = None,
    ) -> torch.Tensor:
        """Depthwise conv (`padding` frames left and right; per chunk of `chunk` frames if
        given), norm, activation, pointwise out."""
        batch_norm = isinstance(self.norm, MaskedBatchNorm1d)
        folded = batch_norm and not self.norm.training  # conv and norm in one
        weight, bias = (self._folded_batch_norm() if folded
                        else (self.depthwise.weight, self.depthwise.bias))  # fmt: skip
        if chunk is None or chunk >= x.shape[1]:
            x = self._depthwise(x, weight, bias, padding)
        else:
            x = self._chunked_depthwise(x, weight, bias, chunk)
        if not folded:
            x = self.norm(x, pad_mask) if batch_norm else self.norm(x)
        x = self.pointwise_out(self.activation(x))
        return self.dropout(x)

    def _chunked_depthwise(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D): the centred depthwise conv of each chunk of `chunk`
        frames with the K//2 frames before it (zeros before the first) and K//2 zeros after
        it, as a stream computes it chunk by chunk (Li et al. 2023)."""
        b, t, d = x.shape
        half = weight.shape[-1] // 2
        n = -(-t // chunk)  # chunks, the last one zero-padded
        padded = F.pad(x, (0, 0, half, n * chunk - t))  # (B, K//2 + N C, D)
        windows = padded.unfold(1, half + chunk, chunk)  # (B, N, D, K//2 + C)
        windows = windows.permute(0, 1, 3, 2).reshape(b * n, half + chunk, d)
        y = self._depthwise(windows, weight, bias, (0, half))  # (B N, C, D)
        return y.reshape(b, n * chunk, d)[:, :t]

    def _depthwise(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: tuple[int, int]
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T + left + right - K + 1, D): the depthwise conv over time, weight
        (D, 1, K), bias (D,), `padding` = (left, right) zero frames.

        Run as a Conv2d of height 1 on the channels-last view of x: (B, T, D) memory is already
        NHWC for (B, D, 1, T), and oneDNN's NHWC depthwise kernel is 20-40x faster on CPU than
        `conv1d` (which first reorders to channels-first). Same weights, same result.

        Always in fp32 on CPU: oneDNN's bf16 NHWC depthwise kernel stalls for minutes on a
        batch of one (d_model 144, kernel 31, 300 frames: over 20 s against 0.01 s in fp32,
        torch 2.11 on an AMX Xeon), which made bf16-mixed training of wide models crawl; the
        conv is a sliver of the FLOPs, so fp32 costs nothing. The result keeps x's dtype
        outside autocast (a bf16 model stays bf16) and is fp32 inside it, as autocast's own
        fp32 ops are.
        """
        half = x.dtype in (torch.bfloat16, torch.float16)
        if x.device.type == "cpu" and (half or torch.is_autocast_enabled("cpu")):
            dtype = torch.float32 if torch.is_autocast_enabled("cpu") else x.dtype
            with torch.autocast("cpu", enabled=False):
                y = self._depthwise(x.float(), weight.float(), bias.float(), padding)
            return y.to(dtype)
        x = x.transpose(1, 2).unsqueeze(2)  # (B, D, 1, T), a view: no copy
        left, right = padding
        if left != right:
            x = F.pad(x, (left, right))
            left = right = 0
        y = F.conv2d(
            x,
            weight.unsqueeze(2),  # (D, 1, 1, K)
            bias,
            padding=(0, left),
            groups=weight.shape[0],
        )  # (B, D, 1, T')
        return y.squeeze(2).transpose(1, 2)  # (B, T', D)

    def _folded_batch_norm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation batch norm folded into the depthwise conv: (weight (D, 1, K), bias (D,))."""
        norm = self.norm
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)  # (D,)
        weight = self.depthwise.weight * scale[:, None, None]
        bias = (self.depthwise.bias - norm.running_mean) * scale + norm.bias
        return weight, bias

"""Changing the sample rate: `resample` (a whole signal) and `StreamingResampler` (the same
signal arriving in pieces of any size, with no seams), both torchaudio's polyphase
windowed-sinc filter with the ratio of `resampling_ratio`."""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torchaudio
from torch import Tensor

# torchaudio's exact resampler builds a kernel of (target / g) x (rate / g) taps, g = gcd: for a
# rate like 4001 Hz that is 64 million taps (1.5 GB), 44101 Hz would take 16 GB. Past 4 million
# taps (32 MB) the ratio is approximated.
MAX_RESAMPLE_TAPS = 4_000_000


def resample(wave: Tensor, rate: int, target_rate: int) -> Tensor:
    """Samples (..., N) at `rate` -> the same at `target_rate` (`torchaudio.functional.resample`)."""
    return torchaudio.functional.resample(wave, *resampling_ratio(rate, target_rate))


def resampling_ratio(rate: int, target_rate: int) -> tuple[int, int]:
    """(orig, new) for `torchaudio.functional.resample`: the exact ratio when its kernel is small.

    Otherwise the closest fraction whose kernel fits MAX_RESAMPLE_TAPS: 3999 / 1000 for 4001 ->
    16000 Hz (6e-8 off), 673 / 1855 for 44101 Hz (1e-6 off); even the worst case (15999 Hz, 6e-5
    off) changes pitch far less than an ear can hear.
    """
    g = math.gcd(rate, target_rate)
    if (rate // g) * (target_rate // g) <= MAX_RESAMPLE_TAPS:
        return rate // g, target_rate // g
    ratio = Fraction(target_rate, rate)  # output samples per input sample
    limit = math.isqrt(MAX_RESAMPLE_TAPS // math.ceil(ratio))
    approx = ratio.limit_denominator(limit)
    return approx.denominator, approx.numerator


class StreamingResampler:
    """Mono samples at `rate` in pieces of any size -> the same at `target_rate`, with no seams:
    the outputs joined equal `resample` of the whole signal (to float32
    rounding: 1e-6).

    `torchaudio.functional.resample` with the ratio (orig, new) of `resampling_ratio` is a
    polyphase filter: the input, with `width` zeros before and `width + orig` after, is cut into
    blocks of `orig` samples, and block k gives outputs k * new ... k * new + new - 1 from input
    samples [k * orig, k * orig + 2 * width + orig) (integers: no drift, whatever the pieces).
    Here a block runs once all its input has arrived; `flush` adds the zeros at the end and
    runs the rest. The input held back is the filter's look-ahead and the rest of a block:
    under `width + orig` samples (17 + 441 from 44.1 kHz to 16 kHz: 10.4 ms).
    """

    def __init__(self, rate: int, target_rate: int) -> None:
        self.orig, self.new = resampling_ratio(rate, target_rate)
        # torchaudio's own filter (what `resample` builds for float32 input), so that the
        # result is the offline one; tests/test_streaming.py compares the two.
        kernel, self.width = torchaudio.functional.functional._get_sinc_resample_kernel(
            self.orig, self.new, 1, dtype=torch.float32
        )
        self.kernel = kernel[:, 0]  # (new, 2 * width + orig)
        self.span = self.kernel.shape[-1]
        self.pending = torch.zeros(self.width)  # the padded input from the next block on
        self.received = 0
        self.emitted = 0

    def __call__(self, samples: Tensor) -> Tensor:
        """The next piece (N,) -> every output sample it completes (N',)."""
        self.pending = torch.cat([self.pending, samples.float()])
        self.received += len(samples)
        return self._run_blocks()

    def flush(self) -> Tensor:
        """The end of the signal: the samples held back (the stream then starts again)."""
        self.pending = torch.cat([self.pending, torch.zeros(self.width + self.orig)])
        total = -(-self.new * self.received // self.orig)  # ceil: the length of `resample`
        owed = total - self.emitted
        out = self._run_blocks()[:owed]
        self.pending, self.received, self.emitted = torch.zeros(self.width), 0, 0
        return out

    def _run_blocks(self) -> Tensor:
        blocks = (len(self.pending) - self.span) // self.orig + 1
        if blocks <= 0:
            return self.pending.new_zeros(0)
        # torchaudio's conv1d, as a matmul: conv1d costs milliseconds per call on small inputs
        windows = self.pending.unfold(0, self.span, self.orig)[:blocks]  # (blocks, span)
        out = windows @ self.kernel.T  # (blocks, new)
        self.pending = self.pending[blocks * self.orig :]
        self.emitted += blocks * self.new
        return out.reshape(-1)

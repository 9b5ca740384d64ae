"""Audio in, log-mel features out.

Here: `load_audio` (any file soundfile reads -> mono float32 (N,) at 16 kHz, optionally only a
segment), `read_audio` (the checked samples of a file or of a file's bytes, at their own rate),
`load_audio_array` (the same for in-memory samples; resampling in `asr.resampling`),
`audio_duration`, `AudioSegment`, `find_audio_files`, the `LogMelFeatures` front end (25 ms
Hann windows every 10 ms, 80 mel bands, log power, per-utterance, global or running (causal)
mean/variance normalization), `running_normalize` and `compute_global_stats`.

Every problem caused by the user's audio raises `AudioError` with one line naming the file.

Shapes: B batch, N samples, T frames, F mel bands.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio
from torch import Tensor, nn

from asr.config import FeatureConfig
from asr.modules.masks import make_pad_mask
from asr.resampling import resample

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".sph", ".nist")
STD_FLOOR = 1e-5  # a feature that never varies is divided by this, not by zero
PER_FEATURE_STD_OFFSET = 1e-5  # normalize "per_feature" divides by std + this (NeMo's)
MIN_RATE, MAX_RATE = 1000, 1_000_000  # sample rates outside: a damaged header, not audio
EMPTY_FILE_BYTES = 4096  # a header with no samples is at most this long; more bytes: damaged
_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioError(ValueError):
    """A user-supplied audio file or array that cannot be used; the message names it."""


def _fail(name: str, reason: str) -> AudioError:
    # One line: libsndfile messages sometimes carry newlines.
    return AudioError(f"cannot read audio file '{name}': {' '.join(reason.split())}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise _fail(str(path), "no such file")
    if path.is_dir():
        raise _fail(str(path), "is a directory, not a file")
    if path.stat().st_size == 0:
        raise _fail(str(path), "file is empty")


def _info(path: Path) -> soundfile._SoundFileInfo:
    """The header of `path`, checked: readable, with samples, not truncated."""
    _check_file(path)
    return _checked_info(str(path), str(path), path.stat().st_size)


def _checked_info(source: Any, name: str, size: int) -> soundfile._SoundFileInfo:
    """The header of `source` (a path, or a file object over `size` bytes), checked."""
    try:
        info = soundfile.info(source)
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise _fail(name, f"not a readable audio file ({err})") from None
    if info.frames <= 0:
        hint = f" although it is {size} bytes long (truncated?)" if size > EMPTY_FILE_BYTES else ""
        raise _fail(name, f"contains no samples{hint}")
    _check_not_truncated(name, info)
    return info


def _check_not_truncated(name: str, info: soundfile._SoundFileInfo) -> None:
    """A WAV whose data chunk is cut short: libsndfile reads what is there without complaint.

    Its log line `data : 32000 (should be 28795)` gives the promised and the present byte
    counts. Sizes 0xFFFFFFFF and 0x7FFFFFFF are what streaming writers put in before they know
    the length, so they promise nothing. (FLAC and Ogg fail to decode instead.)
    """
    found = _WAV_DATA_LOG.search(info.extra_info or "")
    if not found:
        return
    promised, present = int(found[1]), int(found[2])
    if promised > present > 0 and promised not in (0xFFFFFFFF, 0x7FFFFFFF):
        seconds = info.frames / info.samplerate
        raise _fail(
            name,
            f"truncated: its header promises {seconds * promised / present:.3f} s of audio but "
            f"the file holds {seconds:.3f} s",
        )


def audio_duration(path: str | Path) -> float:
    """Seconds of audio in `path`, from the header only (no samples are decoded)."""
    info = _info(Path(path))
    return info.frames / info.samplerate


def load_audio(
    path: str | Path,
    sample_rate: int = 16000,
    offset: float = 0.0,
    duration: float | None = None,
) -> Tensor:
    """Read `path` as mono float32 (N,) at `sample_rate`, only [offset, offset + duration) s.

    Channels are averaged; the rate is changed with `torchaudio.functional.resample`. Only the
    requested segment is decoded (soundfile seeks to it).
    """
    data, rate = read_audio(path, offset, duration)
    return _to_mono(data, rate, sample_rate, str(path))


def read_audio(
    source: str | Path | bytes,
    offset: float = 0.0,
    duration: float | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, int]:
    """[offset, offset + duration) s of an audio file, or of a file's bytes held in memory (a
    packed shard's row), as soundfile decodes it: float32 samples (N, C) and their rate.

    The checks and the seeking of `load_audio`; `name` is what errors call in-memory bytes.
    """
    if isinstance(source, bytes | bytearray):
        name = name or "<bytes>"
        if not source:
            raise _fail(name, "file is empty")

        def opened() -> io.BytesIO:
            return io.BytesIO(source)

        info = _checked_info(opened(), name, len(source))
    else:
        path = Path(source)
        name = str(path)
        info = _info(path)

        def opened() -> str:
            return str(path)

    if offset < 0:
        raise _fail(name, f"offset must be >= 0 s, got {offset}")
    if duration is not None and duration <= 0:
        raise _fail(name, f"duration must be > 0 s, got {duration}")
    start = round(offset * info.samplerate)
    if start >= info.frames:
        total = info.frames / info.samplerate
        raise _fail(name, f"offset {offset} s is past the end ({total:.3f} s long)")
    frames = -1 if duration is None else max(1, round(duration * info.samplerate))
    try:
        return soundfile.read(opened(), start=start, frames=frames, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise _fail(name, f"decoding failed: truncated or corrupt ({err})") from None


def load_audio_array(
    samples: np.ndarray | Tensor,
    sample_rate: int,
    target_rate: int = 16000,
    name: str = "<array>",
) -> Tensor:
    """In-memory audio -> mono float32 (N,) at `target_rate`, with the checks of `load_audio`.

    `samples` is laid out like soundfile returns it: (N,) mono or (N, C) with C channels.
    Floats are taken as they are (nominally in [-1, 1]); signed integers are scaled by their
    full range (int16 / 32768) and uint8 is centred on 128, as in 8-bit WAV. `name` is what
    error messages call this audio (an utterance id, a dataset row).
    """
    array = samples.detach().cpu().numpy() if isinstance(samples, Tensor) else np.asarray(samples)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise _fail(name, f"expected samples of shape (N,) or (N, C), got {array.shape}")
    if array.dtype == np.uint8:
        array = (array.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(array.dtype, np.signedinteger):
        array = array.astype(np.float32) / float(-np.iinfo(array.dtype).min)
    elif not np.issubdtype(array.dtype, np.floating):
        raise _fail(name, f"samples must be float, signed integer or uint8, got {array.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused below
        array = array.astype(np.float32, copy=False)
    return _to_mono(array, sample_rate, target_rate, name)


def _to_mono(data: np.ndarray, rate: int, target_rate: int, name: str) -> Tensor:
    """(N, C) float32 samples at `rate` -> checked mono (N',) tensor at `target_rate`."""
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise _fail(name, "contains no samples")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _fail(name, f"sample rate {rate} Hz is outside [{MIN_RATE}, {MAX_RATE}] Hz")
    if not np.isfinite(data).all():
        raise _fail(name, "contains NaN or infinite samples")
    wave = torch.from_numpy(np.ascontiguousarray(data)).mean(dim=1)  # (N,)
    if rate != target_rate:
        wave = resample(wave, int(rate), target_rate)
    if not torch.isfinite(wave).all():  # float samples near 3e38 overflow when mixed
        raise _fail(name, f"samples too large to use (up to {np.abs(data).max():.3g})")
    return wave.contiguous()


@dataclass(frozen=True)
class AudioSegment:
    """[offset, offset + duration) seconds of the file at `path` (duration None: to the end): an
    input to transcribe, as a manifest line or a corpus row names it."""

    path: str | Path
    offset: float = 0.0
    duration: float | None = None
    id: str | None = None


def find_audio_files(path: str | Path) -> list[Path]:
    """A file -> [file]; a folder -> every audio file below it (by extension), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise _fail(str(path), "no such file or directory")
    found = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )
    if not found:
        raise AudioError(
            f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under directory '{path}'"
        )
    return found


class LogMelFeatures(nn.Module):
    """Waveforms (B, N) with lengths -> normalized log-mel features (B, T, F) with lengths.

    By default frame t covers samples [t * hop, t * hop + win) exactly, so T = 1 + (N - win) // hop
    (0 when N < win). With `center` frame t is centred on sample t * hop over zero padding, and
    T = N // hop (NeMo's count: the STFT's last frame, centred past the end, is dropped). With
    `framing="kaldi"` (Kaldi's and kaldi-native-fbank's snip_edges=false, what sherpa-onnx
    computes) frame t is centred on sample t * hop + hop // 2, samples before the start and past
    the end of each utterance are mirrored (-1 -> 0, N -> N - 1), pre-emphasis is applied within
    each frame (its first sample times 1 - a), and T = (N + hop // 2) // hop. Any way, an
    utterance's features do not depend on the padding of its batch, and padded frames of the
    output are 0. The window and the mel filterbank are buffers: saved in every bundle, and an
    imported model's own are loaded into them. `log_guard` "add": log(power + log_offset);
    "clamp": log(max(power, log_offset)) (Kaldi's).
    """

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        self.win = round(config.sample_rate * config.win_ms / 1000)
        self.hop = round(config.sample_rate * config.hop_ms / 1000)
        if self.win > config.n_fft:
            raise ValueError(
                f"features.win_ms={config.win_ms} gives {self.win} samples, more than "
                f"features.n_fft={config.n_fft}"
            )
        slaney = config.mel_scale == "slaney"
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            win_length=self.win,
            hop_length=self.hop,
            n_mels=config.n_mels,
            window_fn=torch.hann_window,
            wkwargs={"periodic": config.window == "hann"},
            power=2.0,
            center=config.center,
            pad_mode="constant",
            norm="slaney" if slaney else None,
            mel_scale="slaney" if slaney else "htk",
        )
        # Uncentred: torch.stft centres the win-sample window inside each n_fft frame; padding
        # half the difference on each side makes frame t start at sample t * hop.
        self.pad_left = 0 if config.center else (config.n_fft - self.win) // 2
        self.pad_right = 0 if config.center else config.n_fft - self.win - self.pad_left
        self.register_buffer("global_mean", torch.zeros(config.n_mels))
        self.register_buffer("global_std", torch.ones(config.n_mels))

    def num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """Uncentred: 1 + (N - win) // hop, and 0 when N < win. Centred: N // hop. Kaldi's
        framing: (N + hop // 2) // hop (kaldi-native-fbank's NumFrames with snip_edges=false)."""
        if self.config.framing == "kaldi":
            if isinstance(num_samples, Tensor):
                return torch.div(num_samples + self.hop // 2, self.hop, rounding_mode="floor")
            return (int(num_samples) + self.hop // 2) // self.hop
        if self.config.center:
            if isinstance(num_samples, Tensor):
                return torch.div(num_samples, self.hop, rounding_mode="floor")
            return int(num_samples) // self.hop
        if isinstance(num_samples, Tensor):
            return (torch.div(num_samples - self.win, self.hop, rounding_mode="floor") + 1).clamp(
                min=0
            )
        return max(0, 1 + (int(num_samples) - self.win) // self.hop)

    def set_global_stats(self, mean: Tensor, std: Tensor) -> None:
        """Use (x - mean) / std when `normalize="global"`; both (F,), saved in the state_dict."""
        n_mels = self.config.n_mels
        if tuple(mean.shape) != (n_mels,) or tuple(std.shape) != (n_mels,):
            raise ValueError(
                f"global stats must have shape ({n_mels},), got mean {tuple(mean.shape)} "
                f"and std {tuple(std.shape)}"
            )
        self.global_mean.copy_(mean)
        self.global_std.copy_(std.clamp(min=STD_FLOOR))

    def forward(
        self, waves: Tensor, wave_lengths: Tensor, normalize: bool = True
    ) -> tuple[Tensor, Tensor]:
        """waves (B, N), wave_lengths (B,) -> feats (B, T, F), feat_lengths (B,); `normalize`
        False: the log-mel features before `config.normalize` (padding 0 either way)."""
        B, N = waves.shape
        wave_lengths = wave_lengths.to(waves.device).long()
        feat_lengths = self.num_frames(wave_lengths)  # (B,)
        T = self.num_frames(N)
        if T == 0:
            return waves.new_zeros(B, 0, self.config.n_mels), feat_lengths
        # float32 even under bf16/fp16 autocast: log power needs the range and precision.
        with torch.autocast(device_type=waves.device.type, enabled=False):
            if self.config.framing == "kaldi":
                power = self._kaldi_power(waves.float(), wave_lengths, T)  # (B, F, T)
            else:
                power = self._stft_power(waves.float(), wave_lengths, T)  # (B, F, T)
        assert power.shape[-1] == T, (power.shape, T)
        feats = self._log(power)  # (B, T, F)
        pad_mask = make_pad_mask(feat_lengths, T)  # (B, T)
        if not normalize:
            return feats.masked_fill(pad_mask[:, :, None], 0.0), feat_lengths
        feats = self._normalize(feats, pad_mask, feat_lengths)
        return feats.masked_fill(pad_mask[:, :, None], 0.0), feat_lengths

    def frame_start(self, t: int) -> int:
        """The first sample of frame t's window (uncentred framings; negative: mirrored)."""
        return t * self.hop + (
            self.hop // 2 - self.win // 2 if self.config.framing == "kaldi" else 0
        )

    def frames_within(self, num_samples: int) -> int:
        """Frames whose windows lie within the first `num_samples` samples: what a stream can
        compute before its end (Kaldi's framing mirrors the end into its last frames)."""
        if self.config.framing != "kaldi":
            return self.num_frames(num_samples)
        within = (num_samples - self.frame_start(0) - self.win) // self.hop + 1
        return max(0, min(within, self.num_frames(num_samples)))

    def continue_features(
        self, wave: Tensor, state: RunningStats | None, first: int = 0, last: int | None = None,
        base: int = 0,
    ) -> tuple[Tensor, RunningStats | None]:  # fmt: skip
        """Frames first..last-1 of a stream whose samples from `base` on are wave (N,), base + N
        samples in all so far -> (feats (last - first, F), state). `last` None: every frame of
        base + N samples, the end mirrored (Kaldi's framing) as the stream's end. The samples
        of frames first..last-1 must be in `wave`; with Kaldi's framing, frame 0's mirrored
        start reads samples 0.. (keep them while frame 0 is to come). With
        `normalize="running"` normalized from `state` (None at the stream's start) on, so
        pieces give what the whole gives; otherwise each frame on its own (global, none) and
        state None. Per-utterance normalization needs the whole utterance: ValueError."""
        if self.config.normalize in ("utterance", "per_feature"):
            raise ValueError(f"features.normalize {self.config.normalize} needs the whole "
                             "utterance: a stream needs running, global or none")  # fmt: skip
        received = base + wave.shape[0]
        last = self.num_frames(received) if last is None else last
        if self.config.framing == "kaldi":
            lengths = torch.tensor([received], device=wave.device)
            with torch.autocast(device_type=wave.device.type, enabled=False):
                raw = self._log(self._kaldi_power(wave[None].float(), lengths, last - first,
                                                  first, base))  # fmt: skip
        else:
            piece = wave[
                self.frame_start(first) - base : self.frame_start(last - 1) + self.win - base
            ]
            raw, _ = self(piece[None], torch.tensor([piece.shape[0]]), normalize=False)
        if self.config.normalize != "running":
            return self._normalize(raw, None, None)[0], None
        feats, state = self.running_normalize(raw, state)
        return feats[0], state

    def running_normalize(
        self, feats: Tensor, state: RunningStats | None = None
    ) -> tuple[Tensor, RunningStats]:
        """`running_normalize` with this front end's global statistics and prior weight:
        log-mel feats (B, T, F) -> (normalized, state to continue with)."""
        return running_normalize(feats, self.global_mean, self.global_std,
                                 self.config.running_prior_frames, state)  # fmt: skip

    def _stft_power(self, waves: Tensor, wave_lengths: Tensor, T: int) -> Tensor:
        """torch.stft's frames, placed by `center`: waves (B, N) -> mel power (B, F, T)."""
        if self.config.preemphasis:
            waves = self._preemphasis(waves, wave_lengths)
        padded = nn.functional.pad(waves, (self.pad_left, self.pad_right))
        return self.mel(padded)[..., :T]  # centred: drop the frame past the end

    def _kaldi_power(
        self, waves: Tensor, wave_lengths: Tensor, T: int, first: int = 0, base: int = 0
    ) -> Tensor:
        """Kaldi's frames (snip_edges=false) first..first+T-1 of items whose samples from `base`
        on are waves (B, N), `wave_lengths` samples long (from 0) -> mel power (B, F, T).

        Each item is mirrored about its own ends (repeatedly, as Kaldi does, for items shorter
        than half a window), so its frames never read its batch's padding. A stream passes the
        samples it holds (from `base`) and the frames they complete (`continue_features`)."""
        hop, win, a = self.hop, self.win, self.config.preemphasis
        start = self.frame_start(first)  # (negative: mirrored)
        positions = torch.arange(start, start + (T - 1) * hop + win, device=waves.device)  # (S,)
        n = wave_lengths.clamp(min=1)[:, None]  # (B, 1)
        index = positions[None, :] % (2 * n)  # (B, S): the mirror images repeat every 2n
        index = torch.where(index < n, index, 2 * n - 1 - index) - base
        assert int(index.min()) >= 0, "a stream dropped samples its next frames read"
        frames = waves.gather(1, index).unfold(1, win, hop)  # (B, T, win)
        if a:  # Kaldi's: within each frame, its first sample against itself
            first, rest = frames[..., :1] * (1 - a), frames[..., 1:] - a * frames[..., :-1]
            frames = torch.cat([first, rest], dim=-1)
        window = self.mel.spectrogram.window  # (win,)
        power = torch.fft.rfft(frames * window, n=self.config.n_fft).abs() ** 2  # (B, T, n_fft/2+1)
        return (power @ self.mel.mel_scale.fb).transpose(1, 2)  # (B, F, T)

    def _log(self, power: Tensor) -> Tensor:
        """Mel power (B, F, T) -> log-mel (B, T, F), guarded by `log_guard`."""
        if self.config.log_guard == "clamp":
            return torch.log(power.clamp(min=self.config.log_offset)).transpose(1, 2)
        return torch.log(power + self.config.log_offset).transpose(1, 2)

    def _preemphasis(self, waves: Tensor, wave_lengths: Tensor) -> Tensor:
        """x[0], x[n] - a x[n-1]; samples past each item's length stay 0: (B, N)."""
        a = self.config.preemphasis
        out = torch.cat([waves[:, :1], waves[:, 1:] - a * waves[:, :-1]], dim=1)
        return out.masked_fill(make_pad_mask(wave_lengths, waves.shape[1]), 0.0)

    def _normalize(self, feats: Tensor, pad_mask: Tensor, feat_lengths: Tensor) -> Tensor:
        normalize = self.config.normalize
        if normalize == "global":
            return (feats - self.global_mean) / self.global_std
        if normalize == "running":  # causal: padding after an item's frames cannot reach them
            return self.running_normalize(feats)[0]
        if normalize == "none":
            return feats
        # "utterance", "per_feature": statistics over the valid frames of each utterance only.
        valid = (~pad_mask)[:, :, None].to(feats.dtype)  # (B, T, 1)
        n = feat_lengths[:, None, None].to(feats.dtype)  # (B, 1, 1)
        mean = (feats * valid).sum(dim=1, keepdim=True) / n.clamp(min=1)  # (B, 1, F)
        squares = (((feats - mean) * valid) ** 2).sum(dim=1, keepdim=True)  # (B, 1, F)
        if normalize == "per_feature":  # NeMo's: unbiased, 0 for a single frame, plus 1e-5
            std = (squares / (n - 1)).sqrt().nan_to_num(nan=0.0, posinf=0.0)
            return (feats - mean) / (std + PER_FEATURE_STD_OFFSET)
        return (feats - mean) / (squares / n.clamp(min=1)).sqrt().clamp(min=STD_FLOOR)


RunningStats = tuple[Tensor, Tensor, Tensor]  # frames (B,), sum (B, F), sum of squares (B, F)


def running_normalize(
    feats: Tensor, mean: Tensor, std: Tensor, prior_frames: float, state: RunningStats | None = None
) -> tuple[Tensor, RunningStats]:
    """Causal mean/variance normalization: feats (B, T, F) -> (normalized (B, T, F), state).

    Frame t of item b becomes (x_t - m_t) / s_t, m_t and s_t the mean and std of that item's
    frames 0..t together with `prior_frames` frames of the training set's statistics (`mean`,
    `std`, (F,)): the first frames lean on the training set, later ones on the voice heard so
    far. `state` (frames seen, sum, sum of squares, float64) continues an item from where an
    earlier call stopped, so features normalized piece by piece equal those of the whole
    (`asr.inference.streaming`); the returned state is after frame T-1 of each item (for a
    padded batch, of the padding too: only a stream of one item carries it on).
    """
    B, T, F = feats.shape
    x = feats.double()
    count, total, squares = state if state is not None else (
        x.new_zeros(B), x.new_zeros(B, F), x.new_zeros(B, F))  # fmt: skip
    sums = total[:, None] + x.cumsum(dim=1)  # (B, T, F)
    sums_sq = squares[:, None] + (x * x).cumsum(dim=1)
    frames = count[:, None] + torch.arange(1, T + 1, dtype=x.dtype, device=x.device)  # (B, T)
    weight = (prior_frames + frames)[:, :, None]  # (B, T, 1)
    m, v = mean.double(), std.double() ** 2 + mean.double() ** 2  # prior E[x], E[x^2]
    mu = (prior_frames * m + sums) / weight
    var = (prior_frames * v + sums_sq) / weight - mu * mu
    out = ((x - mu) / var.clamp(min=STD_FLOOR**2).sqrt()).to(feats.dtype)
    if T:
        count, total, squares = count + T, sums[:, -1], sums_sq[:, -1]
    return out, (count, total, squares)


def compute_global_stats(
    feature_batches: Iterable[tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """Mean and std (F,) over the valid frames of un-normalized (feats (B, T, F), lengths (B,)).

    Sums are accumulated in float64, so the result equals the stats of all frames concatenated.
    Feed it the output of a `LogMelFeatures` built with `normalize="none"`.
    """
    total = sq_total = None
    count = 0
    for feats, feat_lengths in feature_batches:
        _, T, F = feats.shape  # (B, T, F)
        valid = torch.arange(T, device=feats.device)[None, :] < feat_lengths[:, None]  # (B, T)
        frames = feats[valid].double()  # (frames, F)
        if total is None:
            total, sq_total = frames.new_zeros(F), frames.new_zeros(F)
        total += frames.sum(dim=0)
        sq_total += (frames**2).sum(dim=0)
        count += frames.shape[0]
    if total is None or count == 0:
        raise ValueError("compute_global_stats: no valid frames in the given batches")
    mean = total / count
    var = (sq_total / count - mean**2).clamp(min=0.0)
    return mean.float(), var.sqrt().clamp(min=STD_FLOOR).float()

"""Live transcription: audio in pieces of any size, text after every chunk (`Stream`).

A `Stream` (from `Transcriber.stream`) takes samples as they arrive (`accept`), computes the
log-mel frames they complete, subsamples them, and whenever `chunk` encoder frames are ready runs
the Conformer on that chunk alone, with the keys and values of at most `left_chunks` chunks
before it and the last inputs of each causal convolution carried over
(`CtcModel.forward_chunk`). Each chunk's log-probs extend a greedy CTC hypothesis, the partial
text; `finish` runs what is left (a shorter last chunk), decodes (greedy, or the beam search and
LM of the `DecodingOptions` given) and times the words by forced alignment, as offline. Audio
at another sample rate goes through one `StreamingResampler`: pieces of any size give what the
whole file gives. With `features.framing: kaldi` (sherpa-onnx's) a frame is computed once its
window lies within the audio received (frame 0's start mirrored), and the last frames, whose
windows mirror the utterance's end, at `finish`: the features equal the offline front end's.

The log-probs equal those of `CtcModel.forward(feats, lengths, chunk, left_chunks)` on the whole
utterance (tests/test_streaming.py), which is what a model trained with `dynamic_chunk_training` and
`chunk_conv` or `causal_conv` is trained for. Memory is bounded by the chunk and its left context
except for the utterance's log-probs, kept for the final decoding and word alignment (V floats per
output frame: 11 MB per hour of audio for a character model).

PyTorch or ONNX: the chunk step is the model's (`asr.model.StreamingAcousticModel`: `initial_state`,
`forward_chunk`) and what it carries is a fixed set of tensors (`StreamState`): per block the
attention keys and values of the last L frames, L the left context in encoder frames (fixed for the
stream; the slots not yet filled are masked and `cache_len` counts the filled ones; with
`left_seconds` None the slots grow with the stream), and the last inputs of each convolution (K-1
causal, K//2 chunked). The subsampling carries nothing: each chunk's feature frames repeat the last
span - stride (3 at 4x) of the one before. So the same `Stream` runs on `CtcModel` or on ONNX
Runtime (`OnnxCtcModel` with the chunk graph that `asr export --streaming` writes beside the .onnx;
its layout: `asr.inference.onnx`), with the same partial and final text
(tests/test_onnx_streaming.py).

Latency: a word spoken at time t is emitted when the chunk containing its last frame is complete
(up to `chunk_ms` later, plus the subsampling's look-ahead of 3 feature frames and the window of
the last one, plus 10 ms for audio resampled from 44.1 kHz) and computed (the compute time of
one chunk).

Look-ahead (`lookahead_ms`, latency-controlled chunks as in LC-BLSTM): each chunk is encoded
together with the R encoder frames after it, which its frames see in every block; the state moves
past the chunk only (`forward_chunk(..., emit=C)`) and the next chunk starts with those R frames,
so every frame is emitted once. A word then waits up to `chunk_ms + lookahead_ms`; at an equal
worst case, 480 + 160 ms is more accurate than 640 + 0 (BENCHMARKS.md, "Twelfth session").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.audio import AudioError, RunningStats, audio_duration, load_audio_array, read_audio
from asr.checkpoint import ModelBundle
from asr.config import EncoderConfig, FeatureConfig
from asr.inference.alignment import Word, align_words
from asr.inference.decoding import Decoder, collapse
from asr.inference.result import Result
from asr.modules.conformer import StreamState
from asr.resampling import StreamingResampler
from asr.tokenizer import BLANK_ID

# A word waits up to chunk + look-ahead = 640 ms; at that worst case 480 + 160 is more accurate
# than 640 + 0 (CER +6.9% against +14.6% over the offline model on librispeech-3h, +4.0% against
# +33% on the demo; BENCHMARKS.md, "Twelfth session"), for RTF x1.18 and ~0.1 s on the median word.
DEFAULT_CHUNK_MS = 480.0
DEFAULT_LOOKAHEAD_MS = 160.0
DEFAULT_LEFT_SECONDS = 10.0  # left context kept per chunk: bounded memory, ~all a sentence needs
READ_SECONDS = 10.0  # `feed_file` reads files this much at a time: memory stays flat


@dataclass(frozen=True)
class StreamingOptions:
    """How a file or corpus is fed to a `Stream` when it is transcribed live (`asr evaluate
    --streaming`, the demo's live score): chunk, look-ahead and left context as
    `Transcriber.stream` takes them, the audio in pieces of `piece_ms` as a microphone gives it."""

    chunk_ms: float = DEFAULT_CHUNK_MS
    lookahead_ms: float = DEFAULT_LOOKAHEAD_MS
    left_seconds: float | None = DEFAULT_LEFT_SECONDS
    piece_ms: float = 100.0

    def __post_init__(self) -> None:
        if self.piece_ms <= 0:
            raise ValueError(f"piece_ms must be positive, got {self.piece_ms}")

    @property
    def label(self) -> str:
        """How reports name the setting: "480 + 160 ms chunks", "640 ms chunks"."""
        extra = f" + {self.lookahead_ms:g}" if self.lookahead_ms else ""
        return f"{self.chunk_ms:g}{extra} ms chunks"


@dataclass
class Partial:
    """What a stream knows after a piece of audio: the text so far (it only grows, except that
    the last token may be extended), the audio seconds received and the seconds encoded."""

    text: str
    received: float
    encoded: float
    new_chunks: int = 0
    token_ids: list[int] = field(default_factory=list)


class Stream:
    """Incremental transcription of one audio stream (see the module docstring)."""

    def __init__(
        self,
        bundle: ModelBundle,
        device: torch.device,
        decoder: Decoder,
        chunk_ms: float = DEFAULT_CHUNK_MS,
        left_seconds: float | None = DEFAULT_LEFT_SECONDS,
        id: str = "stream",
        lookahead_ms: float = DEFAULT_LOOKAHEAD_MS,
    ) -> None:
        """`bundle` on `device` (a `Transcriber`'s); `decoder` makes the final token ids."""
        model, frontend = bundle.model, bundle.frontend
        check_streamable(model.config, frontend.config)
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
        if lookahead_ms < 0:
            raise ValueError(f"lookahead_ms must be >= 0, got {lookahead_ms}")
        self.model, self.frontend, self.decoder = model, frontend, decoder
        self.tokenizer = bundle.tokenizer
        self.id = id
        self.rate = frontend.config.sample_rate
        self.frame_seconds = frontend.hop * model.config.subsampling_factor / self.rate
        self.chunk, self.left_chunks = chunk_frames(self.frame_seconds, chunk_ms, left_seconds)
        # encoder frames after each chunk that its frames see, computed again with the next one
        self.lookahead = lookahead_frames(self.frame_seconds, lookahead_ms)
        # encoder frames of left context the attention keeps (None: all, the cache then grows)
        self.max_cache = None if self.left_chunks < 0 else self.left_chunks * self.chunk
        self.geometry = model.geometry
        self.stride = self.geometry.stride  # feature frames per encoder frame
        self.span = self.geometry.span  # feature frames one encoder frame sees: 7 (4x), 15 (8x)
        self.device = device
        # audio at another rate: set by the first piece, resampled across pieces
        self.input_rate = self.rate
        self.input_received = 0
        self.resampler: StreamingResampler | None = None
        # the audio not yet turned into features (model rate), from absolute sample
        # `sample_base` on; `received` samples in all
        self.samples = torch.zeros(0)
        self.sample_base = 0
        self.received = 0
        # features not yet consumed by the subsampling, from absolute frame `feat_base` on
        self.feats = torch.zeros(0, frontend.config.n_mels)
        self.feat_base = 0
        self.norm_state: RunningStats | None = None  # "running" normalization's sums so far
        self.feats_done = 0
        self.frames_done = 0  # encoder frames computed
        # keys/values and convolution inputs carried between chunks, as tensors: an ONNX model
        # without the streaming graph refuses here (`OnnxCtcModel.initial_state`)
        self.state = model.initial_state(1, self.max_cache or 0, device)
        self.log_probs: list[torch.Tensor] = []  # (C, V) per chunk, for the final decoding
        self.tokens: list[int] = []
        self.last_id = BLANK_ID
        self.finished = False

    def accept(self, samples: Any, sample_rate: int | None = None) -> Partial:
        """Add audio (1-D samples, at the model's rate unless `sample_rate` says otherwise: the
        same rate for the whole stream) and run every chunk it completes. Returns the partial
        result. Audio at another rate is resampled as one signal, not piece by piece: the
        pieces' sizes do not change the result."""
        if self.finished:
            raise ValueError("this stream is finished; start a new one")
        rate = sample_rate or self.rate
        if rate != self.input_rate:
            if self.input_received:
                raise ValueError(f"{self.id}: this stream's audio is at {self.input_rate} Hz; "
                                 f"a piece at {rate} Hz cannot follow")  # fmt: skip
            self.input_rate = rate
        try:
            wave = load_audio_array(samples, rate, rate, self.id)  # checked, mono
        except AudioError:
            if len(samples) == 0:
                return self.partial(0)
            raise
        self.input_received += len(wave)
        if rate != self.rate:
            self.resampler = self.resampler or StreamingResampler(rate, self.rate)
            wave = self.resampler(wave)
        self._add(wave)
        return self.partial(self._encode(final=False))

    def finish(self) -> Result:
        """Run what is left, decode and time the words: the final `Result`."""
        if not self.finished:
            if self.resampler is not None:
                self._add(self.resampler.flush())  # the samples its filter held back
            self._features(final=True)
            self._encode(final=True)
            self.finished = True
        result = Result(id=self.id, path=None, duration=self.received / self.rate)
        if not self.log_probs:
            return result
        frames = torch.cat(self.log_probs)  # (T', V)
        token_ids = self.decoder(frames[None], torch.tensor([frames.shape[0]]))[0]
        result.words = align_words(frames, token_ids, self.tokenizer, self.frame_seconds)
        result.text = " ".join(w.word for w in result.words)
        return result

    def partial(self, new_chunks: int) -> Partial:
        return Partial(
            text=self.tokenizer.decode(self.tokens).strip(),
            received=self.input_received / self.input_rate,
            encoded=self.frames_done * self.frame_seconds,
            new_chunks=new_chunks,
            token_ids=list(self.tokens),
        )

    def _add(self, wave: torch.Tensor) -> None:
        """Samples at the model's rate: buffered, and their features computed."""
        self.samples = torch.cat([self.samples, wave.float()])
        self.received += len(wave)
        self._features()

    def _features(self, final: bool = False) -> None:
        """Log-mel frames of every window the received audio completes (at the end: every frame,
        the end mirrored with Kaldi's framing), once they complete the next chunk (or at the
        end): the front end runs once a chunk, however small the pieces."""
        frontend = self.frontend
        n = self.received  # before the end, only the frames whose windows lie within it
        available = frontend.num_frames(n) if final else frontend.frames_within(n)
        needed = self.stride * (self.frames_done + self.chunk + self.lookahead - 1) + self.span
        if available <= self.feats_done or (available < needed and not final):
            return
        with torch.inference_mode():  # (n, F); "running" normalization carries its sums
            feats, self.norm_state = frontend.continue_features(
                self.samples.to(self.device), self.norm_state, self.feats_done, available,
                self.sample_base,
            )  # fmt: skip
        self.feats = torch.cat([self.feats, feats.cpu()])
        self.feats_done = available
        keep_from = max(0, frontend.frame_start(available))  # the next frame starts here
        self.samples = self.samples[keep_from - self.sample_base :]
        self.sample_base = keep_from

    def _encode(self, final: bool) -> int:
        """Run every complete chunk (and, when `final`, the rest); returns the chunks run."""
        ready = self._frames_ready()
        runs = 0
        window = self.chunk + self.lookahead
        while ready - self.frames_done >= window or (final and ready > self.frames_done):
            left = ready - self.frames_done
            self._run_chunk(min(self.chunk, left), min(window, left))
            runs += 1
        return runs

    def _frames_ready(self) -> int:
        """Encoder frames the features so far determine: the subsampling's output length."""
        return self.geometry.output_lengths(self.feats_done)

    def _run_chunk(self, n: int, window: int) -> None:
        """Encode `window` frames from `frames_done` on and keep the first `n` (the rest are
        look-ahead: they come again at the start of the next chunk)."""
        t0 = self.frames_done
        first = self.stride * t0 - self.feat_base
        count = self.stride * (window - 1) + self.span
        feats = self.feats[first : first + count][None].to(self.device)  # (1, count, F)
        if self.max_cache is None:  # all the left context: room for every frame so far
            self.state = grow_cache(self.state, t0 + n)
        with torch.inference_mode():
            # the look-ahead frames' log-probs (window - n) come again with the next chunk
            log_probs, self.state = self.model.forward_chunk(feats, self.state, n)
        log_probs = log_probs[0, :n].float().cpu()  # (n, V)
        self.log_probs.append(log_probs)
        labels = log_probs.argmax(dim=-1).tolist()
        self.tokens += collapse(labels, previous=self.last_id)
        self.last_id = labels[-1]
        self.frames_done += n
        drop = self.stride * self.frames_done - self.feat_base  # features no later frame needs
        self.feats = self.feats[drop:]
        self.feat_base += drop


def grow_cache(state: StreamState, slots: int) -> StreamState:
    """`state` with at least `slots` attention cache slots: empty ones added on the left."""
    att_cache = state.att_cache  # (N, 2, B, H, L, Dh)
    missing = slots - att_cache.shape[4]
    if missing <= 0:
        return state
    empty = att_cache.new_zeros(*att_cache.shape[:4], missing, att_cache.shape[5])
    return state._replace(att_cache=torch.cat([empty, att_cache], dim=4))


def chunk_frames(
    frame_seconds: float, chunk_ms: float, left_seconds: float | None
) -> tuple[int, int]:
    """(chunk, left_chunks): the encoder frames (of `frame_seconds` each) of a chunk of about
    `chunk_ms`, and the chunks of left context in about `left_seconds` (None: -1, all)."""
    chunk = max(1, round(chunk_ms / 1000 / frame_seconds))
    left_chunks = -1 if left_seconds is None else round(left_seconds / (chunk * frame_seconds))
    return chunk, left_chunks


def lookahead_frames(frame_seconds: float, lookahead_ms: float) -> int:
    """The encoder frames (of `frame_seconds` each) of a look-ahead of about `lookahead_ms`."""
    return round(lookahead_ms / 1000 / frame_seconds)


def check_streamable(config: EncoderConfig, features: FeatureConfig) -> None:
    """ValueError (one line) unless a model of `config` with the front end of `features` can
    stream: chunked or causal convolutions, features computable from the past alone, no style
    tokens."""
    check_streamable_encoder(config)
    if features.normalize in ("utterance", "per_feature"):
        raise ValueError(
            "this model normalizes features per utterance, which needs the whole "
            "utterance: streaming needs features.normalize running, global or none"
        )
    if features.framing == "stft" and (features.center or features.preemphasis):
        raise ValueError("streaming with features.framing stft needs features.center false and "
                         "features.preemphasis 0 (or features.framing kaldi)")  # fmt: skip


def check_streamable_encoder(config: EncoderConfig) -> None:
    """ValueError (one line) unless an encoder of `config` can stream, whatever its features:
    chunked or causal convolutions, unpadded subsampling, no style tokens."""
    if not config.streamable_conv:
        raise ValueError(
            "this model cannot stream: it was trained without encoder.chunk_conv or "
            "encoder.causal_conv (its convolutions look ahead); train one with chunk_conv and "
            "dynamic_chunk_training"
        )
    if config.subsampling_padding:
        raise ValueError("streaming needs encoder.subsampling_padding 0 (padded "
                         "subsampling looks one frame ahead)")  # fmt: skip
    if config.style_tokens:
        raise ValueError("models with global style tokens cannot stream (they summarize "
                         "the whole utterance first)")  # fmt: skip


OnPartial = Callable[[Partial, float], None]


def feed(
    stream: Stream,
    samples: np.ndarray,
    sample_rate: int,
    piece_ms: float,
    on_partial: OnPartial | None = None,
) -> None:
    """Feed `samples` ((N,) or (N, C) at `sample_rate`) to `stream` in pieces of `piece_ms`, as a
    microphone delivers them; `on_partial(partial, compute_seconds)` after each piece."""
    piece = max(1, round(piece_ms / 1000 * sample_rate))
    for start in range(0, len(samples), piece):
        began = time.perf_counter()
        partial = stream.accept(samples[start : start + piece], sample_rate)
        if on_partial is not None:
            on_partial(partial, time.perf_counter() - began)


def feed_file(
    stream: Stream,
    path: str | Path,
    piece_ms: float,
    on_partial: OnPartial | None = None,
    read_seconds: float = READ_SECONDS,
) -> None:
    """Feed the file at `path` to `stream` as `feed` does, read `read_seconds` at a time at its
    own rate (memory stays flat; the stream resamples it as one signal, without seams). Raises
    `AudioError` for a file that cannot be read."""
    total = audio_duration(path)
    offset = 0.0
    while offset < total:
        block, rate = read_audio(path, offset, read_seconds)
        if len(block) == 0:
            break
        offset += read_seconds
        feed(stream, block, rate, piece_ms, on_partial)


__all__ = ["DEFAULT_CHUNK_MS", "DEFAULT_LEFT_SECONDS", "DEFAULT_LOOKAHEAD_MS", "Partial", "Stream",
           "StreamingOptions", "Word", "feed",
           "feed_file"]  # fmt: skip

"""Export a streaming model for sherpa-onnx's online NeMo CTC recognizer
(`asr export --format sherpa-onnx --streaming`).

sherpa-onnx's `OnlineRecognizer.from_nemo_ctc` runs a cache-aware streaming model one window of
feature frames at a time, carrying three state tensors between windows. Written by
`asr export --model model.pt --format sherpa-onnx --streaming --output DIR/model.onnx
[--chunk-ms 480] [--lookahead-ms 160] [--left-seconds 10] [--quantize int8]`:

    DIR/model.onnx   audio_signal (B, F, W) float32, length (B,) int64, cache_last_channel
                     (B, 2 N H, L, Dh), cache_last_time (B, N, P, D), cache_last_channel_len
                     (B,) int64 -> logprobs (B, C, V), logprobs_len (B,) and the three caches
                     after the window (same shapes; cache_last_time (B, N + E, P, D) with
                     features.normalize running, below); metadata window_size W, chunk_shift S,
                     cache_last_channel_dim1..3, cache_last_time_dim1..3, vocab_size V - 1
                     (sherpa-onnx adds the blank), subsampling_factor
    DIR/model.int8.onnx, DIR/tokens.txt   as for the offline export (`asr.export.sherpa`)

What sherpa-onnx does with it (sherpa-onnx/csrc/online-recognizer-ctc-impl.h and
online-nemo-ctc-model.cc): the same front end as its offline NeMo CTC recognizer (checked by
tests/test_sherpa_onnx.py with a probe graph: Kaldi framing, the Slaney mel scale, no DC removal,
`asr.export.sherpa`'s docstring), then, whenever more than W frames past the last window's
start are ready, the W frames from there, moving on by S; states start as zeros and go from one
window's outputs to the next window's inputs untouched (several streams: stacked on dim 0);
greedy CTC over the windows' log-probs, collapsed across windows. It never runs a window it
cannot fill, so the last up to W + S frames of a stream are not decoded: feed ~0.7 s of silence
before `input_finished()`.

Our side: one window is `CtcModel.forward_chunk` on C encoder frames, W = stride (C - 1) + span
feature frames (4C + 3 at 4x: the subsampling's 3 frames of overlap with the window before),
S = stride C (with `--lookahead-ms`, R encoder frames of look-ahead: W = stride (C + R - 1) +
span, the window's last R frames seen by its first C and decoded with the next window); the
state is `StreamState` in sherpa-onnx's layout, batch first: each block's
attention keys and values ((N, 2, B, H, L, Dh) -> (B, 2 N H, L, Dh)), convolution inputs
((N, B, P, D) -> (B, N, P, D)) and the count of filled cache slots. L = left_chunks C slots
of left context. So sherpa-onnx's text is that of `CtcModel.forward(feats, lengths, chunk=C,
left_chunks=...)` on the frames it decoded (tests/test_sherpa_onnx.py, real recordings). The
graph maps sherpa-onnx's features onto ours first (`asr.export.sherpa.our_features`): the model
must stream (`check_streamable_encoder`), normalize causally (features.normalize global, none or
running) and have a front end sherpa-onnx computes (`check_front_end`).

Running normalization (`asr.audio.running_normalize`: frame t by the mean and std of frames
0..t and `running_prior_frames` frames of the training set's statistics) needs what was heard
before the window. It travels in E extra slots of cache_last_time, (B, N + E, P, D), E the
fewest that hold 2F + 1 values: the frame count, then per band the sum and the sum of squares of
the raw log-mels' deviations from the training mean (small numbers: float32 keeps them; the count
is exact up to 2^24 frames, 46 hours). All zeros is "nothing heard yet", as sherpa-onnx starts
it; the prior is constants in the graph. A window's W frames are normalized from the statistics
after the window before, but only its first S frames are counted into the statistics it hands on:
the last W - S are the next window's first, so frame t counts once and is normalized as in
`running_normalize` over the whole stream. sherpa-onnx runs only full windows; a shorter one
would count its padding.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from asr.audio import LogMelFeatures
from asr.checkpoint import ModelBundle
from asr.export.onnx import (
    OPSET,
    _compare,
)
from asr.export.sherpa import check_front_end, check_output, our_features, write_checked
from asr.inference.onnx import import_onnxruntime, session_options
from asr.inference.streaming import (
    DEFAULT_CHUNK_MS,
    DEFAULT_LEFT_SECONDS,
    DEFAULT_LOOKAHEAD_MS,
    check_streamable_encoder,
    chunk_frames,
    lookahead_frames,
)
from asr.interop.sources import open_bundle
from asr.model import CtcModel
from asr.modules.conformer import StreamState
from asr.modules.masks import make_pad_mask

log = logging.getLogger(__name__)

INPUT_NAMES = ("audio_signal", "length", "cache_last_channel", "cache_last_time",
               "cache_last_channel_len")  # fmt: skip
OUTPUT_NAMES = ("logprobs", "logprobs_len", "cache_last_channel_next", "cache_last_time_next",
                "cache_last_channel_len_next")  # fmt: skip
STREAMING_NORMALIZATIONS = ("global", "none", "running")  # causal


class SherpaOnlineGraph(nn.Module):
    """What is exported: one window of sherpa-onnx's features and its states -> our
    `CtcModel.forward_chunk` -> log-probs (B, C, V) and the next states (module docstring)."""

    def __init__(
        self, model: CtcModel, frontend: LogMelFeatures, chunk: int, slots: int, lookahead: int = 0
    ) -> None:
        super().__init__()
        self.model, self.frontend = model, frontend
        self.chunk, self.slots, self.lookahead = chunk, slots, lookahead
        geometry = model.geometry
        self.window = geometry.stride * (chunk + lookahead - 1) + geometry.span  # W
        self.shift = geometry.stride * chunk  # S
        self.running = frontend.config.normalize == "running"
        # The running statistics' slots in cache_last_time: 2F + 1 values in slots of P D.
        c = model.config
        self.slot_size = c.conv_cache_frames * c.d_model
        self.stats_slots = math.ceil(self.stats_size / self.slot_size) if self.running else 0
        # The log guard without the normalization: the raw log-mels the statistics are of.
        raw = dataclasses.replace(frontend.config, normalize="none")
        self.raw_frontend = LogMelFeatures(raw) if self.running else frontend

    @property
    def stats_size(self) -> int:
        return 2 * self.frontend.config.n_mels + 1  # frames, F sums, F sums of squares

    def forward(
        self,
        audio_signal: torch.Tensor,
        length: torch.Tensor,
        cache_last_channel: torch.Tensor,
        cache_last_time: torch.Tensor,
        cache_last_channel_len: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        length = length.long()
        N = self.model.config.num_layers
        cnn_cache, stats = cache_last_time[:, :N], cache_last_time[:, N:]  # (B, N|E, P, D)
        if self.running:
            raw = our_features(self.raw_frontend, audio_signal, length)  # (B, W, F)
            feats, stats = self.running_features(raw, stats)
            feats = feats.masked_fill(make_pad_mask(length, feats.shape[1])[:, :, None], 0.0)
        else:
            feats = our_features(self.frontend, audio_signal, length)  # (B, W, F)
        log_probs, state = self.model.forward_chunk(
            feats, to_state(cache_last_channel, cnn_cache, cache_last_channel_len), self.chunk
        )
        log_probs = log_probs[:, : self.chunk]  # the look-ahead's come with the next window
        # (B,): C, as sherpa-onnx ignores it
        out_lengths = self.model.output_lengths(length) - self.lookahead
        channel, time, cache_len = from_state(state)
        return log_probs, out_lengths, channel, torch.cat([time, stats], dim=1), cache_len

    def running_features(
        self, raw: torch.Tensor, stats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw log-mels of one window (B, W, F) and the statistics after the window before, in
        their slots (B, E, P, D) -> the window normalized (`running_normalize` continued) and
        the statistics after its first S frames, in the same slots (module docstring)."""
        B, _, F = raw.shape
        flat = stats.flatten(1).double()  # (B, E P D)
        count, dev, dev_sq = flat[:, :1], flat[:, 1 : F + 1], flat[:, F + 1 : 2 * F + 1]
        m = self.frontend.global_mean.double()  # (F,): sums of deviations from it are stored
        state = (count[:, 0], dev + count * m, dev_sq + 2 * m * dev + count * m * m)
        heard, state = self.frontend.running_normalize(raw[:, : self.shift], state)
        ahead, _ = self.frontend.running_normalize(raw[:, self.shift :], state)  # next window's
        count, total, squares = state[0][:, None], state[1], state[2]  # (B, 1), (B, F), (B, F)
        dev, dev_sq = total - count * m, squares - 2 * m * total + count * m * m
        pad = flat.new_zeros(B, flat.shape[1] - self.stats_size)
        stats = torch.cat([count, dev, dev_sq, pad], dim=1).to(stats.dtype).reshape(stats.shape)
        return torch.cat([heard, ahead], dim=1), stats

    def initial_states(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The states before the first window, in sherpa-onnx's layout (zeros, as it makes them)."""
        channel, time, cache_len = from_state(self.model.initial_state(batch, self.slots))
        stats = time.new_zeros(batch, self.stats_slots, *time.shape[2:])  # (B, E, P, D)
        return channel, torch.cat([time, stats], dim=1), cache_len

    def metadata(self, quantization: str) -> dict[str, str]:
        """What sherpa-onnx reads from the graph (online-nemo-ctc-model.cc), and ours."""
        channel, time, _ = self.initial_states()
        meta = {
            "model_type": "EncDecCTCModelBPE",
            "window_size": str(self.window),
            "chunk_shift": str(self.shift),
            "subsampling_factor": str(self.model.config.subsampling_factor),
            "vocab_size": str(self.model.vocab_size - 1),  # NeMo's count: without the blank
            "normalize_type": "",  # the graph normalizes
            "quantization": quantization,
            "chunk_frames": str(self.chunk),
            "lookahead_frames": str(self.lookahead),
            "left_context_frames": str(self.slots),
            "comment": "exported by asr (asr export --format sherpa-onnx --streaming)",
        }
        for name, cache in (("cache_last_channel", channel), ("cache_last_time", time)):
            for dim in (1, 2, 3):
                meta[f"{name}_dim{dim}"] = str(cache.shape[dim])
        return meta


def from_state(state: StreamState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`StreamState` -> sherpa-onnx's states, batch first: cache_last_channel (B, 2 N H, L, Dh),
    cache_last_time (B, N, P, D), cache_last_channel_len (B,)."""
    N, two, B, H, L, Dh = state.att_cache.shape
    channel = state.att_cache.permute(2, 0, 1, 3, 4, 5).reshape(B, N * two * H, L, Dh)
    return channel, state.cnn_cache.transpose(0, 1), state.cache_len


def to_state(channel: torch.Tensor, time: torch.Tensor, cache_len: torch.Tensor) -> StreamState:
    """sherpa-onnx's states -> `StreamState` (the inverse of `from_state`)."""
    B, _, L, Dh = channel.shape
    N = time.shape[1]
    att_cache = channel.reshape(B, N, 2, -1, L, Dh).permute(1, 2, 0, 3, 4, 5)  # (N, 2, B, H, L, Dh)
    return StreamState(att_cache, time.transpose(0, 1), cache_len.long())


def check_online(bundle: ModelBundle, name: str) -> None:
    """ValueError (one line, naming `name`) unless the bundle can stream in sherpa-onnx."""
    try:
        check_streamable_encoder(bundle.model.config)
    except ValueError as err:
        raise ValueError(f"{name}: no sherpa-onnx streaming model: {err}") from None
    normalize = bundle.frontend.config.normalize
    if normalize not in STREAMING_NORMALIZATIONS:
        raise ValueError(
            f"{name}: no sherpa-onnx streaming model: features.normalize={normalize!r}; "
            f"sherpa-onnx's streaming graph normalizes causally: features.normalize "
            f"{', '.join(STREAMING_NORMALIZATIONS)}"
        )
    check_front_end(bundle.frontend.config, name)


def export_sherpa_online(
    model: str | Path,
    output: str | Path,
    quantize: str = "none",
    chunk_ms: float = DEFAULT_CHUNK_MS,
    left_seconds: float = DEFAULT_LEFT_SECONDS,
    lookahead_ms: float = DEFAULT_LOOKAHEAD_MS,
) -> Path:
    """Export the bundle at `model` (a file or a shipped name) for sherpa-onnx's online NeMo CTC
    recognizer (module docstring): the graph at `output` (an .onnx file) for chunks of about
    `chunk_ms` that also see about `lookahead_ms` after them, with about `left_seconds` of left
    context, tokens.txt beside it, and with
    `quantize` "int8" the int8 graph beside it too. Each graph is checked with ONNX Runtime
    against PyTorch over a stream of windows before anything is written. Returns `output`."""
    output = check_output(output, quantize)
    if chunk_ms <= 0 or left_seconds < 0 or lookahead_ms < 0:
        raise ValueError(f"need --chunk-ms > 0, --left-seconds >= 0 and --lookahead-ms >= 0, got "
                         f"{chunk_ms}, {left_seconds} and {lookahead_ms}")  # fmt: skip
    bundle = open_bundle(model)
    check_online(bundle, str(model))
    frame_seconds = bundle.frame_seconds
    chunk, left_chunks = chunk_frames(frame_seconds, chunk_ms, left_seconds)
    if left_chunks < 1:
        raise ValueError(f"--left-seconds {left_seconds} keeps no chunk of "
                         f"{chunk * frame_seconds:.2f} s: give at least half a chunk")  # fmt: skip
    lookahead = lookahead_frames(frame_seconds, lookahead_ms)
    graph = SherpaOnlineGraph(
        bundle.model, bundle.frontend, chunk, left_chunks * chunk, lookahead
    ).eval()
    files = write_checked(
        output,
        bundle.tokenizer,
        quantize,
        lambda path: _export(graph, path),
        graph.metadata,
        lambda path, **bound: _check(path, graph, **bound),
    )
    log.info("sherpa-onnx streaming model (windows of %d frames every %d, %d slots of left "
             "context) written: %s", graph.window, graph.shift, graph.slots,
             ", ".join(str(path) for path in files))  # fmt: skip
    return output


def example_window(graph: SherpaOnlineGraph, batch: int, generator: torch.Generator):
    """Random log-mel windows (B, F, W) in sherpa-onnx's range."""
    n_mels = graph.frontend.config.n_mels
    return torch.randn(batch, n_mels, graph.window, generator=generator) * 2.0 - 8.0


def _export(graph: SherpaOnlineGraph, path: Path) -> None:
    from torch.export import Dim

    generator = torch.Generator().manual_seed(0)
    feats = example_window(graph, 2, generator)
    channel, time, _ = graph.initial_states(2)
    inputs = (feats, torch.full((2,), graph.window), torch.randn(channel.shape, generator=generator),
              torch.randn(time.shape, generator=generator), torch.tensor([3, graph.slots]))  # fmt: skip
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = Dim("batch", min=1, max=4096)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        program = torch.onnx.export(
            graph,
            inputs,
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=tuple({0: batch} for _ in INPUT_NAMES),
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))


def _check(
    path: Path,
    graph: SherpaOnlineGraph,
    tolerance: float | None = None,
    min_agreement: float | None = None,
) -> None:
    """ONNX Runtime on `path` vs PyTorch's `graph` over a stream of windows, each carrying the
    states of the one before, until the cache has slid: log-probs within `tolerance`, or the
    same argmax on `min_agreement` of the frames (`asr.export.onnx._compare`)."""
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    length = torch.tensor([graph.window])
    want_states = graph.initial_states(1)
    got_states = [t.numpy() for t in want_states]
    pairs = []
    for _ in range(graph.slots // graph.chunk + 2):
        window = example_window(graph, 1, generator)
        with torch.inference_mode():
            want, _, *want_states = graph(window, length, *want_states)
        got, _, *got_states = session.run(
            list(OUTPUT_NAMES),
            dict(zip(INPUT_NAMES, [window.numpy(), length.numpy(), *got_states])),
        )
        pairs.append((torch.from_numpy(got)[0], want[0]))
    _compare(pairs, tolerance, min_agreement, "sherpa-onnx streaming graph ")

"""Export a model bundle to ONNX, fp32 or with int8 weights (`asr export --format onnx`).

The exporter is PyTorch's TorchDynamo-based one (`torch.onnx.export(..., dynamo=True)`, built on
`torch.export`): the TorchScript-based exporter is deprecated since torch 2.9 and traces one
example, so every Python branch and loop on the length is frozen into the graph, while
`torch.export` keeps the batch and time sizes as symbols and refuses (at export time, not at
run time) any code that would specialize on them. The encoder's position term has its own
export formulation for this (`asr.modules.attention.relative_shift_gather`).

The graph: `feats (B, T, F)` normalized log-mel + `feat_lengths (B,)` -> `log_probs (B, T', V)`
+ `out_lengths (B,)`, B and T dynamic, with intermediate CTC and self-conditioning inside. The
front end stays out of the graph (ONNX has no STFT that every runtime supports); its settings
and normalization statistics, the tokenizer and the configuration go into the metadata
(`asr.inference.onnx.bundle_metadata`), so the file is self-contained.

int8: ONNX Runtime's dynamic quantization (`quantize_dynamic`) of the weights of MatMul and Gemm
nodes, activations quantized per batch at run time; matmuls of two activations (attention
scores) stay in float32 (`MatMulConstBOnly`), where 8 bits would cost accuracy and no weights
are saved.

Streaming (`streaming=True`, `asr export --streaming`, for models that can stream): the chunk
step `CtcModel.forward_chunk` is exported too, to `NAME.streaming.onnx` beside the file, with
its state (`StreamState`: attention keys/values per block, causal-convolution inputs, the count
of valid cache slots) as explicit inputs and outputs, and the chunk size, the left context and
the batch dynamic: the layout is in `asr.inference.onnx`'s docstring. The subsampling needs no
state of its own: a chunk's input repeats the last span - stride feature frames of the one
before. The main file's metadata names the streaming graph, so `asr.load_model("m.onnx").stream()`
runs on it; int8 quantizes both.

Every export is checked before it is written: ONNX Runtime runs the new graph on a padded batch
of two lengths and its log-probs must match PyTorch's (fp32: 1e-3 at most; the tests hold it to
1e-4 on real batches; int8: the same argmax token on 95% of the valid frames at least), or
nothing is written; a streaming graph is checked the same way on a stream of chunks whose
cache fills up and wraps, against PyTorch's `forward_chunk`.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asr.checkpoint import ModelBundle, atomic_write
from asr.extras import require
from asr.inference.onnx import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    STREAMING_INPUT_NAMES,
    STREAMING_OUTPUT_NAMES,
    bundle_metadata,
    import_onnxruntime,
    session_options,
    streaming_metadata,
    streaming_path,
)
from asr.inference.streaming import check_streamable
from asr.interop.sources import open_bundle
from asr.model import CtcModel
from asr.modules.conformer import StreamState

log = logging.getLogger(__name__)

OPSET = 18
QUANTIZATIONS = ("none", "int8")
# The largest |difference| of fp32 log-probs between ONNX Runtime and PyTorch an export may show.
CHECK_TOLERANCE = 1e-3
# int8 log-probs differ by ~0.1 from PyTorch's (the shipped model): what must hold is the
# greedy token, on this share of the check batch's frames at least.
INT8_MIN_AGREEMENT = 0.95


class _Graph(nn.Module):
    """What is exported: `CtcModel.forward`, with the inputs and outputs named in the docstring."""

    def __init__(self, model: CtcModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, feats: torch.Tensor, feat_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(feats, feat_lengths)


class _ChunkGraph(nn.Module):
    """The streaming graph: `CtcModel.forward_chunk`, its state as separate tensors."""

    def __init__(self, model: CtcModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        feats: torch.Tensor,
        att_cache: torch.Tensor,
        cnn_cache: torch.Tensor,
        cache_len: torch.Tensor,
        emit: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        log_probs, state = self.model.forward_chunk(
            feats, StreamState(att_cache, cnn_cache, cache_len), emit
        )
        return (log_probs, *state)


def export_onnx(
    model: str | Path, output: str | Path, quantize: str = "none", streaming: bool = False
) -> Path:
    """Export the bundle at `model` (a file or a shipped name) to the ONNX file `output`, and
    with `streaming` its chunk graph to `streaming_path(output)` (NAME.streaming.onnx).

    `quantize`: "none" (fp32) or "int8" (dynamic quantization of MatMul/Gemm weights). The files
    are written atomically, after ONNX Runtime has checked them. Returns `output`.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
    require("onnx", "onnx", "ONNX export")
    require("onnxscript", "onnx", "ONNX export")
    import_onnxruntime()
    bundle = open_bundle(model)
    if bundle.model.config.style_tokens:
        raise ValueError(
            f"{model}: models with global style tokens cannot be exported to ONNX yet (their "
            f"reference encoder runs a GRU over packed sequences, which torch.export does not "
            f"capture)"
        )
    if streaming:
        try:
            check_streamable(bundle.model.config, bundle.frontend.config)
        except ValueError as err:
            raise ValueError(f"{model}: no streaming graph: {err}") from None
    output = Path(output)
    metadata = bundle_metadata(bundle, quantize)
    with tempfile.TemporaryDirectory() as tmp:
        stream_data = None
        if streaming:
            stream_data = _build(
                Path(tmp) / "streaming", bundle, quantize, _export_streaming_fp32,
                streaming_metadata(bundle, quantize), _check_streaming,
            )  # fmt: skip
            metadata["streaming_graph"] = streaming_path(output).name
        data = _build(Path(tmp) / "offline", bundle, quantize, _export_fp32, metadata, _check)
    if stream_data is not None:  # first: a main file that names it finds it there
        atomic_write(streaming_path(output), lambda path: path.write_bytes(stream_data))
        log.info("%s streaming graph written to %s (%.1f MB)", quantize,
                 streaming_path(output), len(stream_data) / 1e6)  # fmt: skip
    atomic_write(output, lambda path: path.write_bytes(data))
    log.info("%s model written to %s (%.1f MB)", quantize, output, len(data) / 1e6)
    return output


def _build(
    folder: Path,
    bundle: ModelBundle,
    quantize: str,
    export: Callable[[CtcModel, int, Path], None],
    metadata: dict[str, str],
    check: Callable[..., None],
) -> bytes:
    """One graph: `export`ed in fp32, with `metadata`, `check`ed against PyTorch, quantized and
    checked again for int8. Returns the bytes of the file to write."""
    import onnx

    folder.mkdir()
    fp32_path = folder / "fp32.onnx"
    export(bundle.model, bundle.frontend.config.n_mels, fp32_path)
    graph = onnx.load(str(fp32_path))
    _set_metadata(graph, metadata)
    onnx.save(graph, str(fp32_path))
    check(fp32_path, bundle, tolerance=CHECK_TOLERANCE)
    if quantize != "int8":
        return fp32_path.read_bytes()
    final = folder / "int8.onnx"
    _quantize_int8(fp32_path, final)
    graph = onnx.load(str(final))
    _set_metadata(graph, metadata)
    onnx.save(graph, str(final))
    check(final, bundle, min_agreement=INT8_MIN_AGREEMENT)
    return final.read_bytes()


def example_inputs(model: CtcModel, n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of two lengths: feats (2, T, F), feat_lengths (2,)."""
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 300, n_mels, generator=generator)
    lengths = torch.tensor([300, 211])
    feats[1, 211:] = 0.0
    return feats, lengths


def _export_fp32(model: CtcModel, n_mels: int, path: Path) -> None:
    from torch.export import Dim

    feats, lengths = example_inputs(model, n_mels)
    # torch's exporter warns for every torchvision operator it cannot register: noise here
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = Dim("batch", min=1, max=4096)
    # The shortest input the subsampling turns into one frame: 7 feature frames (4x), 15 (8x).
    min_frames = 7 if model.config.subsampling_factor == 4 else 15
    time = Dim("time", min=min_frames, max=1_000_000)
    graph = _Graph(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # "The axis name: batch will not be used": both inputs share the batch axis, as meant
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        program = torch.onnx.export(
            graph,
            (feats, lengths),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch, 1: time}, {0: batch}),
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))


def streaming_example(model: CtcModel, n_mels: int) -> tuple[torch.Tensor, StreamState]:
    """A chunk of 8 frames for two streams, with 24 cache slots (5 and 24 valid)."""
    generator = torch.Generator().manual_seed(0)
    geometry = model.geometry
    feats = torch.randn(2, geometry.stride * 8 + geometry.span - geometry.stride, n_mels,
                        generator=generator)  # fmt: skip
    state = model.initial_state(2, 24)
    state = StreamState(
        torch.randn(state.att_cache.shape, generator=generator),
        torch.randn(state.cnn_cache.shape, generator=generator),
        torch.tensor([5, 24]),
    )
    return feats, state


def _export_streaming_fp32(model: CtcModel, n_mels: int, path: Path) -> None:
    from torch.export import Dim

    feats, state = streaming_example(model, n_mels)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = Dim("batch", min=1, max=4096)
    # The frames of C output frames: stride C + (span - stride), as a derived dimension, so
    # that the exporter knows C exactly (not as a floor division it cannot reason about).
    geometry = model.geometry
    chunk = Dim("chunk", min=1, max=100_000)
    cache = Dim("cache", min=1, max=1_000_000)  # 0 slots run as well (left context 0)
    time = geometry.stride * chunk + (geometry.span - geometry.stride)
    dynamic = ({0: batch, 1: time}, {2: batch, 4: cache}, {1: batch}, {0: batch}, None)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        program = torch.onnx.export(
            _ChunkGraph(model).eval(),
            (feats, *state, torch.tensor(6)),  # 8 frames, 2 of them look-ahead
            dynamo=True,
            input_names=list(STREAMING_INPUT_NAMES),
            output_names=list(STREAMING_OUTPUT_NAMES),
            dynamic_shapes=dynamic,
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))


def _quantize_int8(source: Path, target: Path) -> None:
    """The fp32 graph at `source` with int8 weights, at `target` (tests/test_onnx.py wraps this
    to break the weights it writes, and checks that the export refuses the result)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Its advice to run shape inference first does not apply: the exported graph has every shape.
    hint = _DropMessage("consider to run pre-processing before quantization")
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.getLogger().removeFilter(hint)


class _DropMessage(logging.Filter):
    """Drops the log records whose message contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _set_metadata(graph, metadata: dict[str, str]) -> None:
    del graph.metadata_props[:]
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value


class ExportCheckError(RuntimeError, ValueError):
    """The exported graph does not compute what the PyTorch model does (the export is refused,
    nothing written): a user-facing error (ValueError: one line from the CLI)."""


def _check(
    path: Path,
    bundle: ModelBundle,
    tolerance: float | None = None,
    min_agreement: float | None = None,
) -> None:
    """Run the exported graph with ONNX Runtime on the example batch and compare to PyTorch:
    equal output lengths, log-probs within `tolerance`, the same argmax token on at least
    `min_agreement` of the valid frames. ExportCheckError otherwise."""
    ort = import_onnxruntime()
    feats, lengths = example_inputs(bundle.model, bundle.frontend.config.n_mels)
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    got, got_lengths = session.run(
        list(OUTPUT_NAMES), {INPUT_NAMES[0]: feats.numpy(), INPUT_NAMES[1]: lengths.numpy()}
    )
    with torch.inference_mode():
        want, want_lengths = bundle.model(feats, lengths)
    if not torch.equal(torch.from_numpy(got_lengths), want_lengths):
        raise ExportCheckError(
            f"ONNX export check failed: output lengths {got_lengths.tolist()}, PyTorch "
            f"{want_lengths.tolist()}"
        )
    pairs = [(torch.from_numpy(got)[b, :n], want[b, :n]) for b, n in enumerate(want_lengths)]
    _compare(pairs, tolerance, min_agreement, "")


# The check stream: (frames, of which kept) per chunk (look-ahead, the last one short), cache
# slots (2 chunks).
CHECK_CHUNKS = ((8, 8), (8, 8), (10, 8), (8, 6), (8, 8), (8, 8), (5, 5))
CHECK_CACHE = 16


def _check_streaming(
    path: Path,
    bundle: ModelBundle,
    tolerance: float | None = None,
    min_agreement: float | None = None,
) -> None:
    """Run the streaming graph with ONNX Runtime over a stream of `CHECK_CHUNKS` chunks (each
    carrying its own state from the one before) and compare to PyTorch's `forward_chunk` as
    `_check` does. ExportCheckError otherwise."""
    ort = import_onnxruntime()
    model, geometry = bundle.model, bundle.model.geometry
    frames = sum(emit for _, emit in CHECK_CHUNKS)
    generator = torch.Generator().manual_seed(1)
    feats = torch.randn(1, geometry.stride * (frames - 1) + geometry.span,
                        bundle.frontend.config.n_mels, generator=generator)  # fmt: skip
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    want_state = model.initial_state(1, CHECK_CACHE)
    got_state = [t.numpy() for t in want_state]
    pairs, done = [], 0
    for n, emit in CHECK_CHUNKS:
        start = geometry.stride * done
        window = feats[:, start : start + geometry.stride * (n - 1) + geometry.span]
        with torch.inference_mode():
            want, want_state = model.forward_chunk(window, want_state, emit)
        got, *got_state = session.run(
            list(STREAMING_OUTPUT_NAMES),
            dict(zip(STREAMING_INPUT_NAMES, [window.numpy(), *got_state, np.array(emit)])),
        )
        if got.shape != tuple(want.shape) or got_state[2].tolist() != want_state.cache_len.tolist():
            raise ExportCheckError(
                f"ONNX export check failed: the streaming graph gave log-probs {got.shape} and "
                f"{got_state[2].tolist()} valid cache frames, PyTorch {tuple(want.shape)} and "
                f"{want_state.cache_len.tolist()}"
            )
        pairs.append((torch.from_numpy(got)[0], want[0]))
        done += emit
    _compare(pairs, tolerance, min_agreement, "streaming graph ")


def _compare(
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    tolerance: float | None,
    min_agreement: float | None,
    what: str,
) -> None:
    """(ONNX Runtime, PyTorch) log-probs (T', V) per item: within `tolerance`, the same argmax
    on `min_agreement` of the frames, or ExportCheckError naming `what` was checked."""
    diff = max((g - w).abs().max().item() for g, w in pairs)
    log.info("export check: %smax |log-prob difference| vs PyTorch %.2e", what, diff)
    if tolerance is not None and diff > tolerance:
        raise ExportCheckError(
            f"ONNX export check failed: the {what}log-probs differ from PyTorch's by {diff:.2e} "
            f"(tolerance {tolerance:.0e}); please report this with your torch version"
        )
    if min_agreement is not None:
        same = torch.cat([g.argmax(-1) == w.argmax(-1) for g, w in pairs])  # (valid frames,)
        agreement = same.double().mean().item()
        log.info("export check: %sint8 argmax agreement with PyTorch %.1f%% of %d frames "
                 "(%.0f%% required)", what, 100 * agreement, len(same),
                 100 * min_agreement)  # fmt: skip
        if agreement < min_agreement:
            raise ExportCheckError(
                f"ONNX export check failed: the int8 {what}argmax agreement with PyTorch "
                f"{100 * agreement:.1f}% (of {len(same)} valid frames) is below the "
                f"{100 * min_agreement:.0f}% required: int8 loses too much for this model "
                f"(export it in fp32, --quantize none)"
            )

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

Every export is checked before it is written: ONNX Runtime runs the new graph on a padded batch
of two lengths and its log-probs must match PyTorch's (fp32: 1e-3 at most; the tests hold it to
1e-4 on real batches; int8: the same argmax token on 95% of the valid frames at least), or
nothing is written.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from asr.checkpoint import ModelBundle, atomic_write
from asr.extras import require
from asr.inference.onnx import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    bundle_metadata,
    import_onnxruntime,
    session_options,
)
from asr.interop.sources import open_bundle
from asr.model import CtcModel

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


def export_onnx(model: str | Path, output: str | Path, quantize: str = "none") -> Path:
    """Export the bundle at `model` (a file or a shipped name) to the ONNX file `output`.

    `quantize`: "none" (fp32) or "int8" (dynamic quantization of MatMul/Gemm weights). The file
    is written atomically, after ONNX Runtime has checked it. Returns `output`.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
    onnx = require("onnx", "onnx", "ONNX export")
    require("onnxscript", "onnx", "ONNX export")
    import_onnxruntime()
    bundle = open_bundle(model)
    if bundle.model.config.style_tokens:
        raise ValueError(
            f"{model}: models with global style tokens cannot be exported to ONNX yet (their "
            f"reference encoder runs a GRU over packed sequences, which torch.export does not "
            f"capture)"
        )
    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        _export_fp32(bundle.model, bundle.frontend.config.n_mels, fp32_path)
        graph = onnx.load(str(fp32_path))
        _set_metadata(graph, bundle_metadata(bundle))
        onnx.save(graph, str(fp32_path))
        _check(fp32_path, bundle, tolerance=CHECK_TOLERANCE)
        final = fp32_path
        if quantize == "int8":
            final = Path(tmp) / "int8.onnx"
            _quantize_int8(fp32_path, final)
            graph = onnx.load(str(final))
            _set_metadata(graph, bundle_metadata(bundle, quantization="int8"))
            onnx.save(graph, str(final))
            _check(final, bundle, min_agreement=INT8_MIN_AGREEMENT)
        data = final.read_bytes()
    atomic_write(output, lambda path: path.write_bytes(data))
    log.info("%s model written to %s (%.1f MB)", quantize, output, len(data) / 1e6)
    return output


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
    diff = max((g - w).abs().max().item() for g, w in pairs)
    log.info("export check: max |log-prob difference| vs PyTorch %.2e", diff)
    if tolerance is not None and diff > tolerance:
        raise ExportCheckError(
            f"ONNX export check failed: log-probs differ from PyTorch's by {diff:.2e} "
            f"(tolerance {tolerance:.0e}); please report this with your torch version"
        )
    if min_agreement is not None:
        same = torch.cat([g.argmax(-1) == w.argmax(-1) for g, w in pairs])  # (valid frames,)
        agreement = same.double().mean().item()
        log.info("export check: int8 argmax agreement with PyTorch %.1f%% of %d frames "
                 "(%.0f%% required)", 100 * agreement, len(same), 100 * min_agreement)  # fmt: skip
        if agreement < min_agreement:
            raise ExportCheckError(
                f"ONNX export check failed: the int8 model's argmax agreement with PyTorch "
                f"{100 * agreement:.1f}% (of {len(same)} valid frames) is below the "
                f"{100 * min_agreement:.0f}% required: int8 loses too much for this model "
                f"(export it in fp32, --quantize none)"
            )

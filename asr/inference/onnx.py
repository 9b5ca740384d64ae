"""Models exported to ONNX (`asr export --format onnx`), run by ONNX Runtime.

An exported `.onnx` file is self-contained like `model.pt`: its graph is the encoder and CTC
head, `feats (B, T, F)` + `feat_lengths (B,)` -> `log_probs (B, T', V)` + `out_lengths (B,)`
with dynamic B and T, and its metadata (`metadata_props`) carry everything else a bundle has,
as JSON under the key `asr_bundle`: the encoder and feature configurations, the tokenizer, the
vocabulary size, the normalization statistics of the front end and the bundle's info. Plain keys
beside it (`vocab_size`, `subsampling_factor`, `blank_id`, `feat_dim`, `normalize_type`,
`quantization`) describe the graph to tools that read no JSON.

`load_onnx_bundle` rebuilds the front end and tokenizer from that metadata and wraps the ONNX
Runtime session in `OnnxCtcModel`, which implements the acoustic-model protocol
(`asr.model.AcousticModel`: `config`, `vocab_size`, `geometry`, `output_lengths`,
`__call__(feats, feat_lengths)`), as `CtcModel` does, so `Transcriber`,
`asr transcribe` and `asr evaluate` run the same front end, chunking, decoding, word timing and
output code for both. ONNX Runtime is an optional dependency: `pip install 'asr[onnx]'`.

Streaming (`asr export --streaming`): a second file beside it, `NAME.streaming.onnx`, holds the
chunk graph, `CtcModel.forward_chunk` with its state as explicit tensors (`StreamState`):

    feats (B, stride C + span - stride, F)   the chunk's feature frames (they overlap the last
                                             chunk's by span - stride: 3 at 4x, 7 at 8x)
    att_cache (N, 2, B, H, L, Dh)            keys and values of the last L frames per block,
                                             the valid ones right-aligned
    cnn_cache (N, B, P, D)                   each block's last convolution inputs (P = K-1
                                             causal, K//2 chunked)
    cache_len (B,) int64                     valid frames in att_cache (the rest is masked)
    emit () int64                            the chunk's frames E <= C the state moves past;
                                             the last C - E are look-ahead (the next chunk
                                             starts with them); E = C without look-ahead
      -> log_probs (B, C, V), new_att_cache, new_cnn_cache, new_cache_len (same shapes)

with B, C and L dynamic: the chunk size and the left context are chosen per stream (L slots,
fixed for a stream with bounded left context). Its metadata has the bundle's JSON and plain keys
for tools (`STREAMING_KEYS`); the main file's `streaming_graph` names it. `OnnxCtcModel`
loads it when a stream starts (`initial_state`, `forward_chunk`), so `Stream` runs on ONNX
Runtime exactly as on PyTorch (tests/test_onnx_streaming.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.audio import LogMelFeatures
from asr.checkpoint import BundleError, ModelBundle, bundle_parts
from asr.config import EncoderConfig, to_dict
from asr.extras import require
from asr.modules.conformer import StreamState
from asr.modules.subsampling import SubsamplingGeometry
from asr.tokenizer import BLANK_ID, Tokenizer

ONNX_FORMAT = "asr-onnx-model"
ONNX_VERSION = 1
METADATA_KEY = "asr_bundle"
INPUT_NAMES = ("feats", "feat_lengths")
OUTPUT_NAMES = ("log_probs", "out_lengths")
STREAMING_INPUT_NAMES = ("feats", "att_cache", "cnn_cache", "cache_len", "emit")
# exported before look-ahead: every frame of a chunk is kept (emit = C)
STREAMING_INPUT_NAMES_V1 = STREAMING_INPUT_NAMES[:4]
STREAMING_OUTPUT_NAMES = ("log_probs", "new_att_cache", "new_cnn_cache", "new_cache_len")
STREAMING_SUFFIX = ".streaming.onnx"
# the plain metadata keys of a streaming graph, beside the bundle's JSON
STREAMING_KEYS = ("graph", "num_layers", "num_heads", "head_dim", "d_model", "cnn_cache_frames",
                  "subsampling_stride", "subsampling_span", "frame_seconds")  # fmt: skip


def is_onnx_path(path: str | Path) -> bool:
    """Whether `path` names an ONNX model (by its suffix, as every ONNX tool does)."""
    return Path(path).suffix.lower() == ".onnx"


def import_onnxruntime() -> Any:
    return require("onnxruntime", "onnx", "running an ONNX model")


def bundle_metadata(bundle: ModelBundle, quantization: str = "none") -> dict[str, str]:
    """The `metadata_props` of an exported bundle (see the module docstring)."""
    frontend = bundle.frontend
    payload = {
        "format": ONNX_FORMAT,
        "version": ONNX_VERSION,
        "encoder_config": to_dict(bundle.model.config),
        "features_config": to_dict(frontend.config),
        "tokenizer": bundle.tokenizer.to_dict(),
        "vocab_size": bundle.model.vocab_size,
        # The front end's buffers: normalization statistics, window, mel filterbank (an imported
        # model's own). float32 -> Python float -> JSON text -> float32 is exact.
        "frontend_state": {k: v.tolist() for k, v in frontend.state_dict().items()},
        "info": bundle.info,
        "quantization": quantization,
    }
    return {
        METADATA_KEY: json.dumps(payload, default=str),
        "model_type": "asr-conformer-ctc",
        "vocab_size": str(bundle.model.vocab_size),
        "subsampling_factor": str(bundle.model.config.subsampling_factor),
        "blank_id": str(BLANK_ID),
        "feat_dim": str(frontend.config.n_mels),
        "normalize_type": frontend.config.normalize,
        "quantization": quantization,
    }


def streaming_path(path: str | Path) -> Path:
    """Where the streaming graph of the export at `path` goes: m.onnx -> m.streaming.onnx."""
    path = Path(path)
    return path.with_name(path.name[: -len(path.suffix)] + STREAMING_SUFFIX)


def streaming_metadata(bundle: ModelBundle, quantization: str = "none") -> dict[str, str]:
    """The `metadata_props` of a streaming graph: the bundle's, and the cache geometry."""
    config, geometry = bundle.model.config, bundle.model.geometry
    return {
        **bundle_metadata(bundle, quantization),
        "graph": "streaming",
        "num_layers": str(config.num_layers),
        "num_heads": str(config.num_heads),
        "head_dim": str(config.d_model // config.num_heads),
        "d_model": str(config.d_model),
        "cnn_cache_frames": str(config.conv_cache_frames),
        "subsampling_stride": str(geometry.stride),
        "subsampling_span": str(geometry.span),
        "frame_seconds": repr(bundle.frame_seconds),
    }


class OnnxCtcModel:
    """An ONNX Runtime session implementing `asr.model.AcousticModel` (CPU only), and
    `StreamingAcousticModel` when the export has a streaming graph (`streaming`: its path)."""

    def __init__(
        self,
        session: Any,
        config: EncoderConfig,
        vocab_size: int,
        path: Path | None = None,
        streaming: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.session = session
        self.config = config
        self.vocab_size = vocab_size
        self.geometry = SubsamplingGeometry(config.subsampling_factor, config.subsampling_padding)
        self.path, self.streaming, self.threads = path, streaming, threads
        self._streaming_session: Any = None

    def output_lengths(self, feat_lengths: torch.Tensor) -> torch.Tensor:
        """Frames out for frames in, as the exported subsampling computes them."""
        return self.geometry.output_lengths(feat_lengths)

    def __call__(
        self, feats: torch.Tensor, feat_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F) float32, feat_lengths (B,) -> (log_probs (B, T', V), out_lengths (B,))."""
        log_probs, out_lengths = self.session.run(
            list(OUTPUT_NAMES),
            {
                INPUT_NAMES[0]: np.ascontiguousarray(feats.detach().cpu().float().numpy()),
                INPUT_NAMES[1]: feat_lengths.detach().cpu().long().numpy(),
            },
        )
        return torch.from_numpy(log_probs), torch.from_numpy(out_lengths)

    def initial_state(
        self, batch: int = 1, cache_frames: int = 0, device: torch.device | str = "cpu"
    ) -> StreamState:
        """The state before a stream's first chunk (zeros; `cache_frames` slots of left
        context), shaped as the streaming graph wants. ValueError (one line) without one."""
        self._streaming_graph()  # refuses here, before any audio
        c = self.config
        d_head = c.d_model // c.num_heads
        return StreamState(
            torch.zeros(c.num_layers, 2, batch, c.num_heads, cache_frames, d_head),
            torch.zeros(c.num_layers, batch, c.conv_cache_frames, c.d_model),
            torch.zeros(batch, dtype=torch.long),
        )

    def forward_chunk(
        self, feats: torch.Tensor, state: StreamState, emit: int | None = None
    ) -> tuple[torch.Tensor, StreamState]:
        """One chunk through the streaming graph: as `CtcModel.forward_chunk`."""
        session = self._streaming_graph()
        feed = {name: np.ascontiguousarray(value.detach().cpu().numpy())
                for name, value in zip(STREAMING_INPUT_NAMES, (feats.float(), *state))}  # fmt: skip
        chunk = self.geometry.output_lengths(feats.shape[1])
        if len(session.get_inputs()) == len(STREAMING_INPUT_NAMES):
            feed["emit"] = np.array(chunk if emit is None else emit, dtype=np.int64)
        elif emit is not None and emit != chunk:
            raise ValueError(f"{self.streaming} was exported without look-ahead: export it again "
                             f"(asr export --streaming) or stream with lookahead_ms=0")  # fmt: skip
        outputs = session.run(list(STREAMING_OUTPUT_NAMES), feed)
        log_probs, *new_state = (torch.from_numpy(output) for output in outputs)
        return log_probs, StreamState(*new_state)

    def _streaming_graph(self) -> Any:
        """The streaming graph's session, opened on first use."""
        if self._streaming_session is None:
            self._streaming_session = _open_streaming_graph(self.path, self.streaming, self.threads)
        return self._streaming_session

    def to(self, device: str | torch.device) -> OnnxCtcModel:
        if torch.device(device).type != "cpu":
            raise ValueError(
                f"ONNX models run on the CPU with ONNX Runtime, not on {device}; use the "
                f"model.pt bundle for a GPU"
            )
        return self

    def eval(self) -> OnnxCtcModel:
        return self


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime options: all graph optimizations, `threads` (default: torch's) intra-op."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
    # Without the arena, freed buffers go back to the system: a 10-minute file peaked at 976 MB
    # instead of 1112 MB, at the same speed (bench/onnx_speed.py; 1 hour stays within 1 GB).
    options.enable_cpu_mem_arena = False
    return options


def load_onnx_bundle(path: str | Path, threads: int | None = None) -> ModelBundle:
    """The `ModelBundle` of an exported `.onnx` file: ONNX Runtime model, front end, tokenizer.

    Raises `BundleError` (one line naming the file) for a missing, truncated or foreign file.
    """
    ort = import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model file not found: {path}")
    try:
        session = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # ONNX Runtime raises its own exception types for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BundleError(
            f"cannot read {path}: not an ONNX model, or truncated ({first})"
        ) from None
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise BundleError(
            f"{path} is an ONNX model but not one exported by asr (no '{METADATA_KEY}' "
            f"metadata: no tokenizer or front end to run it with); export one with "
            f"`asr export --model model.pt --format onnx`"
        )
    bundle_parts = _parse_metadata(path, raw)
    if session.get_modelmeta().custom_metadata_map.get("graph") == "streaming":
        raise BundleError(
            f"{path} is the streaming graph of an export: load the .onnx file beside it "
            f"(its streams use this one)"
        )
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if tuple(names[0]) != INPUT_NAMES or tuple(names[1]) != OUTPUT_NAMES:
        raise BundleError(
            f"{path}: expected inputs {list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)}, "
            f"found {names[0]} and {names[1]}"
        )
    encoder_config, frontend, tokenizer, vocab_size, info = bundle_parts
    graph = session.get_modelmeta().custom_metadata_map.get("streaming_graph")
    streaming = path.parent / graph if graph else None
    model = OnnxCtcModel(session, encoder_config, vocab_size, path, streaming, threads)
    return ModelBundle(model, frontend, tokenizer, info)


def _open_streaming_graph(path: Path | None, streaming: Path | None, threads: int | None) -> Any:
    """The ONNX Runtime session of the streaming graph `streaming` of the export at `path`;
    ValueError (one line) when there is none, or it is not that export's."""
    if streaming is None:
        raise ValueError(
            f"{path} has no streaming graph: export the model with `asr export --model "
            f"model.pt --format onnx --streaming` (a model trained with encoder.chunk_conv or "
            f"causal_conv), "
            f"or stream the model.pt"
        )
    if not streaming.is_file():
        raise ValueError(f"{path} streams with {streaming.name}, which is not beside it")
    ort = import_onnxruntime()
    try:
        session = ort.InferenceSession(
            str(streaming), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # ONNX Runtime's own exception types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot read {streaming}: not an ONNX model, or truncated ({first})"
        ) from None
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    meta = session.get_modelmeta().custom_metadata_map
    inputs_known = tuple(names[0]) in (STREAMING_INPUT_NAMES, STREAMING_INPUT_NAMES_V1)
    if not inputs_known or tuple(names[1]) != STREAMING_OUTPUT_NAMES \
            or meta.get("graph") != "streaming":  # fmt: skip
        raise ValueError(f"{streaming} is not the streaming graph of an asr export (inputs "
                         f"{names[0]}, outputs {names[1]})")  # fmt: skip
    return session


def _parse_metadata(
    path: Path, raw: str
) -> tuple[EncoderConfig, LogMelFeatures, Tokenizer, int, dict[str, Any]]:
    damaged = "has damaged asr metadata"
    try:
        meta = json.loads(raw)
        if meta.get("format") != ONNX_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {ONNX_FORMAT!r}")
        if int(meta.get("version", 0)) > ONNX_VERSION:
            raise ValueError(f"written by a newer asr (version {meta['version']})")
    except (ValueError, TypeError, AttributeError) as err:
        raise BundleError(f"{path} {damaged}: {err}") from None
    tokenizer, encoder_config, features_config, vocab_size = bundle_parts(meta, path, damaged)
    try:
        frontend = LogMelFeatures(features_config)
        if "frontend_state" in meta:
            state = {k: torch.tensor(v, dtype=torch.float32)
                     for k, v in meta["frontend_state"].items()}  # fmt: skip
            frontend.load_state_dict(state)
        else:  # written before the whole front-end state was stored
            frontend.set_global_stats(
                torch.tensor(meta["global_mean"], dtype=torch.float32),
                torch.tensor(meta["global_std"], dtype=torch.float32),
            )
        info = dict(meta.get("info") or {})
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise BundleError(f"{path} {damaged}: {err}") from None
    return encoder_config, frontend.eval(), tokenizer, vocab_size, info

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
from asr.modules.subsampling import SubsamplingGeometry
from asr.tokenizer import BLANK_ID, Tokenizer

ONNX_FORMAT = "asr-onnx-model"
ONNX_VERSION = 1
METADATA_KEY = "asr_bundle"
INPUT_NAMES = ("feats", "feat_lengths")
OUTPUT_NAMES = ("log_probs", "out_lengths")


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


class OnnxCtcModel:
    """An ONNX Runtime session implementing `asr.model.AcousticModel` (CPU only)."""

    def __init__(self, session: Any, config: EncoderConfig, vocab_size: int) -> None:
        self.session = session
        self.config = config
        self.vocab_size = vocab_size
        self.geometry = SubsamplingGeometry(config.subsampling_factor, config.subsampling_padding)

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
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if tuple(names[0]) != INPUT_NAMES or tuple(names[1]) != OUTPUT_NAMES:
        raise BundleError(
            f"{path}: expected inputs {list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)}, "
            f"found {names[0]} and {names[1]}"
        )
    encoder_config, frontend, tokenizer, vocab_size, info = bundle_parts
    model = OnnxCtcModel(session, encoder_config, vocab_size)
    return ModelBundle(model, frontend, tokenizer, info)


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

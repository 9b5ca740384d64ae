"""Import NVIDIA NeMo Conformer-CTC checkpoints (`.nemo`) as ordinary model bundles.

A `.nemo` file is a tar of `model_config.yaml`, `model_weights.ckpt` (a state dict) and the
SentencePiece tokenizer. NeMo's Conformer-CTC (`EncDecCTCModelBPE` with a `ConformerEncoder`,
"striding" subsampling and relative-position attention) is this toolkit's architecture with
a few documented differences, each a configuration option here, not a special case:

    NeMo                                   here
    subsampling convs padded by 1          encoder.subsampling_padding: 1
    xscaling (x * sqrt(d_model))           encoder.xscaling: true
    untie_biases: false (shared u, v)      encoder.shared_pos_bias: true
    preemph 0.97, centred STFT frames,     features.preemphasis: 0.97, center: true,
    symmetric Hann window, slaney mels,    window: hann_symmetric, mel_scale: slaney,
    log guard 2^-24, per_feature norm      log_offset: 5.96e-08, normalize: per_feature
    mel filterbank and window buffers      loaded into the front end's own buffers
    blank last (id V)                      blank first: the head's rows move, the tokenizer
                                           gets a <blank> piece at id 0 (ids + 1)

`asr.interop.nemo_archive` reads the archive in memory within size caps, and the weights
without running pickled code; this module maps what it reads. Anything the mapping does not
cover (FastConformer's dw_striding, transducer or hybrid heads, limited attention context, ...)
is a `NemoImportError` naming it; every weight is accounted for or the import fails.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from asr.audio import LogMelFeatures
from asr.checkpoint import ModelBundle, save_bundle
from asr.config import EncoderConfig, FeatureConfig
from asr.interop.nemo_archive import (
    CONFIG_MEMBER,
    WEIGHTS_MEMBER,
    NemoImportError,
    read_nemo,
    read_weights,
)

# Re-exported: the archive's caps keep the names their error messages give them.
from asr.interop.nemo_archive import MAX_MEMBER_BYTES as MAX_MEMBER_BYTES
from asr.interop.nemo_archive import MAX_MEMBERS as MAX_MEMBERS
from asr.interop.nemo_archive import MAX_TOTAL_BYTES as MAX_TOTAL_BYTES
from asr.model import CtcModel
from asr.tokenizer import SentencePieceTokenizer, with_blank_first

SUPPORTED_MODELS = ("EncDecCTCModelBPE",)
# NeMo's AudioToMelSpectrogramPreprocessor defaults, for keys a config leaves out.
PREPROCESSOR_DEFAULTS: dict[str, Any] = {
    "sample_rate": 16000, "window_size": 0.02, "window_stride": 0.01, "window": "hann",
    "normalize": "per_feature", "n_fft": None, "preemph": 0.97, "features": 64, "log": True,
    "log_zero_guard_type": "add", "log_zero_guard_value": 2**-24, "frame_splicing": 1,
    "exact_pad": False, "mag_power": 2.0, "pad_value": 0.0,
}  # fmt: skip
ENCODER_DEFAULTS: dict[str, Any] = {
    "feat_out": -1, "subsampling": "striding", "subsampling_factor": 4,
    "subsampling_conv_channels": -1, "causal_downsampling": False, "ff_expansion_factor": 4,
    "self_attention_model": "rel_pos", "att_context_size": None, "xscaling": True,
    "untie_biases": True, "conv_kernel_size": 31, "conv_norm_type": "batch_norm",
    "conv_context_size": None, "dropout": 0.1, "dropout_att": 0.1, "global_tokens": 0,
    "use_bias": True, "reduction": None,
}  # fmt: skip


def import_nemo(path: str | Path, output: str | Path | None = None) -> ModelBundle:
    """The bundle of a NeMo Conformer-CTC `.nemo` file, in eval mode on the CPU; written to
    `output` (a `model.pt`, atomically) when given. NemoImportError on anything unsupported."""
    path = Path(path)
    members = read_nemo(path)
    cfg = _resolve(yaml.safe_load(members[CONFIG_MEMBER]) or {}, path)
    model_name = str(cfg.get("target") or cfg.get("_target_") or "").rsplit(".", 1)[-1]
    if model_name not in SUPPORTED_MODELS:
        kind = _model_kind(model_name)
        raise NemoImportError(
            f"{path}: unsupported NeMo model {model_name or 'of unknown type'}{kind}: only "
            f"Conformer-CTC with a SentencePiece tokenizer ({', '.join(SUPPORTED_MODELS)}) imports"
        )
    features_config = feature_config(cfg.get("preprocessor") or {}, path)
    encoder_config = encoder_config_of(cfg.get("encoder") or {}, features_config, path)
    tokenizer = _tokenizer(cfg.get("tokenizer") or {}, members, path)
    state = read_weights(members[WEIGHTS_MEMBER], path)
    vocab = tokenizer.vocab_size  # NeMo's V pieces + our blank at id 0
    model, frontend = CtcModel(encoder_config, vocab), LogMelFeatures(features_config)
    model_state, frontend_state = map_weights(state, encoder_config, vocab, path)
    model.load_state_dict(model_state)
    frontend.load_state_dict({**frontend.state_dict(), **frontend_state})
    info = {
        "source": "nemo",
        "nemo_file": path.name,
        "nemo_model": model_name,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    bundle = ModelBundle(model.eval(), frontend.eval(), tokenizer, info)
    if output is not None:
        save_bundle(output, model, frontend, tokenizer, info)
    return bundle


def _model_kind(name: str) -> str:
    lowered = name.lower()
    if "hybrid" in lowered:
        return " (a hybrid transducer/CTC model)"
    if "rnnt" in lowered:
        return " (a transducer)"
    if name == "EncDecCTCModel":
        return " (a character-vocabulary CTC model)"
    return ""


def _resolve(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """The config with OmegaConf interpolations `${a.b}` (from the root, `model.` optional)
    replaced by their values, as NeMo would read them."""
    if not isinstance(cfg, dict):
        raise NemoImportError(f"{path}: {CONFIG_MEMBER} does not hold a mapping")

    def lookup(ref: str) -> Any:
        node: Any = cfg
        for part in re.sub(r"^model\.", "", ref).split("."):
            if not isinstance(node, dict) or part not in node:
                raise NemoImportError(f"{path}: cannot resolve ${{{ref}}} in {CONFIG_MEMBER}")
            node = node[part]
        return node

    def walk(node: Any, depth: int = 0) -> Any:
        if depth > 20:
            raise NemoImportError(f"{path}: {CONFIG_MEMBER} nests too deep or loops")
        if isinstance(node, dict):
            return {k: walk(v, depth + 1) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, depth + 1) for v in node]
        if isinstance(node, str):
            whole = re.fullmatch(r"\$\{([\w.]+)\}", node)
            if whole:
                return walk(lookup(whole.group(1)), depth + 1)
        return node

    return walk(cfg)


def _unsupported(path: Path, what: str) -> NemoImportError:
    return NemoImportError(f"{path}: unsupported {what}")


def feature_config(pre: dict[str, Any], path: Path) -> FeatureConfig:
    """NeMo's AudioToMelSpectrogramPreprocessor settings as our FeatureConfig."""
    target = str(pre.get("_target_", "AudioToMelSpectrogramPreprocessor")).rsplit(".", 1)[-1]
    if target != "AudioToMelSpectrogramPreprocessor":
        raise _unsupported(path, f"preprocessor {target} (only AudioToMelSpectrogramPreprocessor)")
    p = {**PREPROCESSOR_DEFAULTS, **pre}
    checks = {
        "window": (p["window"] == "hann", "window {!r} (only hann)"),
        "log": (p["log"] is True, "preprocessor log={!r} (only log features)"),
        "log_zero_guard_type": (p["log_zero_guard_type"] == "add", "log guard {!r} (only add)"),
        "frame_splicing": (p["frame_splicing"] == 1, "frame_splicing={!r} (only 1)"),
        "exact_pad": (not p["exact_pad"], "exact_pad={!r} (only centred frames)"),
        "mag_power": (p["mag_power"] == 2.0, "mag_power={!r} (only the power spectrum, 2)"),
        "pad_value": (p["pad_value"] == 0.0, "pad_value={!r} (only 0)"),
    }
    for key, (ok, message) in checks.items():
        if not ok:
            raise _unsupported(path, message.format(p[key]))
    normalize = p["normalize"]
    if normalize not in ("per_feature", None, "", "NA", "none"):
        raise _unsupported(path, f"feature normalization {normalize!r} (per_feature or none)")
    if not isinstance(p["log_zero_guard_value"], int | float):
        raise _unsupported(path, f"log_zero_guard_value {p['log_zero_guard_value']!r}")
    rate = int(p["sample_rate"])
    win, hop = (p.get("n_window_size"), p.get("n_window_stride"))
    win_ms = 1000 * (win / rate if win else float(p["window_size"]))
    hop_ms = 1000 * (hop / rate if hop else float(p["window_stride"]))
    win_samples = round(rate * win_ms / 1000)
    n_fft = p["n_fft"] or 2 ** math.ceil(math.log2(win_samples))
    try:
        return FeatureConfig(
            sample_rate=rate,
            n_mels=int(p.get("nfilt", p["features"])),
            win_ms=win_ms,
            hop_ms=hop_ms,
            n_fft=int(n_fft),
            normalize="per_feature" if normalize == "per_feature" else "none",
            preemphasis=float(p["preemph"] or 0.0),
            center=True,
            window="hann_symmetric",
            mel_scale="slaney",
            log_offset=float(p["log_zero_guard_value"]),
        )
    except ValueError as err:
        raise _unsupported(path, f"preprocessor settings: {err}") from None


def encoder_config_of(enc: dict[str, Any], features: FeatureConfig, path: Path) -> EncoderConfig:
    """NeMo's ConformerEncoder settings as our EncoderConfig."""
    target = str(enc.get("_target_", "")).rsplit(".", 1)[-1]
    if target and target != "ConformerEncoder":
        raise _unsupported(path, f"encoder {target} (only ConformerEncoder)")
    e = {**ENCODER_DEFAULTS, **enc}
    d_model = int(e["d_model"])
    kernel = int(e["conv_kernel_size"])
    context = e["att_context_size"]
    if context not in (None, [-1, -1]):
        raise _unsupported(path, f"att_context_size {context!r} (only full context [-1, -1])")
    conv_context = e["conv_context_size"]
    centred, causal = [(kernel - 1) // 2] * 2, [kernel - 1, 0]
    if conv_context not in (None, centred, "causal", causal):
        raise _unsupported(path, f"conv_context_size {conv_context!r} (centred or causal)")
    checks = {
        "subsampling": (e["subsampling"] == "striding",
                        "subsampling {!r} (only striding; dw_striding is FastConformer)"),
        "subsampling_factor": (e["subsampling_factor"] in (4, 8), "subsampling_factor {!r}"),
        "subsampling_conv_channels": (e["subsampling_conv_channels"] in (-1, d_model, None),
                                      "subsampling_conv_channels {!r} (only d_model)"),
        "feat_out": (e["feat_out"] in (-1, None), "encoder feat_out {!r} (no output projection)"),
        "feat_in": (e.get("feat_in", features.n_mels) == features.n_mels,
                    "encoder feat_in {!r} (must equal the preprocessor's features)"),
        "causal_downsampling": (not e["causal_downsampling"], "causal_downsampling={!r}"),
        "self_attention_model": (e["self_attention_model"] == "rel_pos",
                                 "self_attention_model {!r} (only rel_pos)"),
        "global_tokens": (not e["global_tokens"], "global_tokens={!r}"),
        "use_bias": (e["use_bias"] is True, "use_bias={!r} (only layers with biases)"),
        "reduction": (e["reduction"] is None, "time reduction {!r}"),
        "conv_norm_type": (e["conv_norm_type"] in ("batch_norm", "layer_norm"),
                           "conv_norm_type {!r} (batch_norm or layer_norm)"),
        "ff_expansion_factor": (float(e["ff_expansion_factor"]).is_integer(),
                                "ff_expansion_factor {!r} (only whole numbers)"),
    }  # fmt: skip
    for key, (ok, message) in checks.items():
        if not ok:
            raise _unsupported(path, message.format(e.get(key)))
    try:
        return EncoderConfig(
            feat_dim=features.n_mels,
            d_model=d_model,
            num_layers=int(e["n_layers"]),
            num_heads=int(e["n_heads"]),
            ff_mult=int(e["ff_expansion_factor"]),
            conv_kernel_size=kernel,
            subsampling_factor=int(e["subsampling_factor"]),
            subsampling_channels=d_model,
            subsampling_padding=1,
            xscaling=bool(e["xscaling"]),
            shared_pos_bias=not e["untie_biases"],
            dropout=float(e["dropout"]),
            attn_dropout=float(e["dropout_att"]),
            conv_norm=e["conv_norm_type"],
            causal_conv=conv_context in ("causal", causal),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise _unsupported(path, f"encoder settings: {err!r}") from None


def _tokenizer(
    tok: dict[str, Any], members: dict[str, bytes], path: Path
) -> SentencePieceTokenizer:
    """NeMo's SentencePiece tokenizer with a `<blank>` piece inserted at id 0."""
    if tok.get("type", "bpe") != "bpe":
        raise _unsupported(path, f"tokenizer type {tok.get('type')!r} (only SentencePiece, bpe)")
    ref = str(tok.get("model_path") or "")
    name = ref.removeprefix("nemo:")
    found = [m for m in members if m == name or m.endswith(Path(name).name)] if name else []
    if not found:
        found = [m for m in members if m.endswith("tokenizer.model")]
    if len(found) != 1:
        raise NemoImportError(f"{path}: cannot find its SentencePiece model ({ref or 'no path'})")
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(members[found[0]])
        kind = {pb.TrainerSpec.UNIGRAM: "unigram", pb.TrainerSpec.BPE: "bpe"}.get(
            proto.trainer_spec.model_type
        )
        if kind is None:
            raise _unsupported(path, "SentencePiece model type (only unigram or bpe)")
        return SentencePieceTokenizer(with_blank_first(members[found[0]]), kind)
    except NemoImportError:
        raise
    except Exception as err:  # a damaged protobuf or a model sentencepiece refuses
        raise NemoImportError(f"{path}: its tokenizer {found[0]} is unreadable: {err}") from None


# NeMo's ConformerLayer parameter names (after "encoder.layers.{i}.") -> ours (after
# "encoder.blocks.{i}."); NeMo's 1x1 Conv1d weights (out, in, 1) become Linear weights.
LAYER_NAMES = {
    "norm_feed_forward1": "ff1.net.0",
    "feed_forward1.linear1": "ff1.net.1",
    "feed_forward1.linear2": "ff1.net.4",
    "norm_self_att": "mhsa.layer_norm",
    "self_attn.linear_q": "mhsa.attention.query",
    "self_attn.linear_k": "mhsa.attention.key",
    "self_attn.linear_v": "mhsa.attention.value",
    "self_attn.linear_out": "mhsa.attention.out",
    "self_attn.linear_pos": "mhsa.attention.pos",
    "self_attn": "mhsa.attention",  # pos_bias_u, pos_bias_v
    "norm_conv": "conv.layer_norm",
    "conv.pointwise_conv1": "conv.pointwise_in",
    "conv.depthwise_conv": "conv.depthwise",
    "conv.batch_norm": "conv.norm",
    "conv.pointwise_conv2": "conv.pointwise_out",
    "norm_feed_forward2": "ff2.net.0",
    "feed_forward2.linear1": "ff2.net.1",
    "feed_forward2.linear2": "ff2.net.4",
    "norm_out": "final_norm",
}
IGNORED = re.compile(r"(\.num_batches_tracked|^encoder\.pos_enc\.pe)$")


def map_weights(
    state: dict[str, torch.Tensor], config: EncoderConfig, vocab: int, path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """NeMo's state dict -> (our CtcModel's, our LogMelFeatures' window and filterbank).

    Every NeMo tensor is used or known to be unneeded (batch norm counters, the cached
    position table), and every one of ours is filled: anything else is a NemoImportError.
    """
    state = {k: v for k, v in state.items() if not IGNORED.search(k)}
    ours: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise NemoImportError(f"{path}: its weights lack {name}")
        return state.pop(name)

    for k in [k for k in state if k.startswith("encoder.pre_encode.")]:
        ours["encoder.subsampling." + k.removeprefix("encoder.pre_encode.")] = take(k)
    layer = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias|running_mean|running_var|"
                       r"pos_bias_u|pos_bias_v)$")  # fmt: skip
    for k in [k for k in state if k.startswith("encoder.layers.")]:
        match = layer.match(k)
        if match is None or match.group(2) not in LAYER_NAMES:
            continue  # reported below as not understood
        i, module, leaf = match.groups()
        tensor = take(k)
        if module.startswith("conv.pointwise"):
            tensor = tensor.squeeze(-1)  # Conv1d (out, in, 1) -> Linear (out, in)
        ours[f"encoder.blocks.{i}.{LAYER_NAMES[module]}.{leaf}"] = tensor
    for leaf in ("pos_bias_u", "pos_bias_v"):  # shared by all layers (untie_biases: false)
        if f"encoder.{leaf}" in state:
            shared = take(f"encoder.{leaf}")
            for i in range(config.num_layers):
                ours.setdefault(f"encoder.blocks.{i}.mhsa.attention.{leaf}", shared)
    # The head: NeMo's blank is its last row; ours is row 0, the pieces follow in order.
    weight = take("decoder.decoder_layers.0.weight").squeeze(-1)  # (V, D)
    bias = take("decoder.decoder_layers.0.bias")
    if weight.shape != (vocab, config.d_model):
        raise NemoImportError(
            f"{path}: its CTC head is {tuple(weight.shape)}, expected ({vocab}, {config.d_model})"
            f" for a tokenizer of {vocab - 1} pieces and the blank"
        )
    order = torch.cat([torch.tensor([vocab - 1]), torch.arange(vocab - 1)])
    ours["head.weight"], ours["head.bias"] = weight[order], bias[order]
    frontend = {
        "mel.spectrogram.window": take("preprocessor.featurizer.window").float(),
        "mel.mel_scale.fb": take("preprocessor.featurizer.fb").squeeze(0).T.contiguous().float(),
    }
    if state:
        names = ", ".join(sorted(state)[:3])
        raise NemoImportError(
            f"{path}: unsupported weights {names}{' ...' if len(state) > 3 else ''} (not part of "
            f"a Conformer-CTC model this importer maps)"
        )
    expected = CtcModel(config, vocab).state_dict()
    missing, extra = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    if missing:
        raise NemoImportError(f"{path}: its weights lack what {missing[0]} needs")
    if extra:
        raise NemoImportError(f"{path}: unsupported weights for {extra[0]} (not in the config)")
    for name, tensor in ours.items():
        if tensor.shape != expected[name].shape:
            raise NemoImportError(
                f"{path}: {name} is {tuple(tensor.shape)}, the config says "
                f"{tuple(expected[name].shape)}"
            )
    return ours, frontend

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

The archive is read in memory, never extracted: every member must be a plain file or folder
with a safe relative name (`asr.corpora.download.check_member`) and fit the size caps
(MAX_MEMBER_BYTES, MAX_TOTAL_BYTES, checked before reading: a gzip bomb stops at its tar
header), and the weights load with `torch.load(weights_only=True)`, so no pickled code runs.
Anything this mapping does not cover (FastConformer's dw_striding, transducer or hybrid heads,
limited attention context, ...) is a `NemoImportError` naming it; every weight is accounted for
or the import fails.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import math
import pickle
import re
import tarfile
import zlib
from pathlib import Path
from typing import Any

import torch
import yaml

from asr.audio import LogMelFeatures
from asr.checkpoint import BundleError, ModelBundle, save_bundle
from asr.config import EncoderConfig, FeatureConfig
from asr.corpora.download import UnsafeArchiveError, check_member
from asr.model import CtcModel
from asr.tokenizer import SentencePieceTokenizer, with_blank_first

log = logging.getLogger(__name__)

CONFIG_MEMBER = "model_config.yaml"
WEIGHTS_MEMBER = "model_weights.ckpt"
SUPPORTED_MODELS = ("EncDecCTCModelBPE",)
# Caps on what a .nemo file may make us hold in memory: a large Conformer-CTC .nemo is ~0.5 GB,
# nearly all of it the weights member; a gzip bomb of a few MB can declare 50 GB.
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 6 << 30
MAX_MEMBERS = 1000  # NeMo writes fewer than ten; each member costs memory however small
# What tarfile's "r:*" reads, by magic number (NeMo writes gzip or plain tar).
DECOMPRESSORS = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}
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


class NemoImportError(BundleError):
    """A `.nemo` file this importer cannot or will not read; the message names the file."""


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
    state = _load_weights(members[WEIGHTS_MEMBER], path)
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


def read_nemo(
    path: Path,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> dict[str, bytes]:
    """The members of a `.nemo` tar by name (leading "./" removed), checked, read in memory.

    A member whose tar header declares more than `max_member_bytes`, or that would bring the
    uncompressed archive over `max_total_bytes`, fails before it is read (a gzip bomb is a few
    megabytes on disk and declares its true, uncompressed sizes); every byte decompressed is
    counted against `max_total_bytes` too, tarfile's own reads of headers included.
    """
    if not path.is_file():
        raise FileNotFoundError(f"NeMo model file not found: {path}")
    members: dict[str, bytes] = {}
    try:
        with (
            _Bounded(path, max_member_bytes, max_total_bytes) as stream,
            tarfile.open(fileobj=stream, mode="r:") as tar,
        ):
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise NemoImportError(
                        f"{path} has more than {max_members} members "
                        f"(asr.interop.nemo.MAX_MEMBERS): {member.name!r} is number {count}"
                    )
                check_member(member, "/nemo-archive", path)
                if not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(
                        f"{path}: refused member {member.name!r}: not a plain file or folder"
                    )
                if member.isfile():
                    stream.check_member(member)
                    data = tar.extractfile(member)
                    name = re.sub(r"^(\./)+", "", member.name)
                    members[name] = data.read() if data is not None else b""
    except UnsafeArchiveError as err:
        raise NemoImportError(str(err)) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        raise NemoImportError(
            f"{path} is not a readable .nemo archive (truncated or not a tar): {err}"
        ) from None
    for required in (CONFIG_MEMBER, WEIGHTS_MEMBER):
        if required not in members:
            raise NemoImportError(f"{path} is not a NeMo model: it has no {required}")
    return members


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("kiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class _Bounded:
    """A `.nemo` file, decompressed as it is read, that refuses to read or seek past its limits
    before decompressing anything: tarfile reads an extended (pax) header or a long name whole,
    whatever size it declares, before read_nemo sees a member."""

    def __init__(self, path: Path, max_member_bytes: int, max_total_bytes: int) -> None:
        with open(path, "rb") as f:
            magic = f.read(6)
        opener = next((o for m, o in DECOMPRESSORS.items() if magic.startswith(m)), open)
        self.raw = opener(path, "rb")
        self.path = path
        self.max_member_bytes = max_member_bytes
        self.max_total_bytes = max_total_bytes

    def __enter__(self) -> _Bounded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.close()

    def check_member(self, member: tarfile.TarInfo) -> None:
        """NemoImportError naming `member`, before it is read, if its size (declared in its
        header: the uncompressed size) is over a limit, or would bring the archive over one."""
        total = self.raw.tell() + member.size  # the tar headers count too
        if member.size > self.max_member_bytes:
            raise NemoImportError(
                f"{self.path}: member {member.name!r} is {_size(member.size)} uncompressed, over "
                f"the limit of {_size(self.max_member_bytes)} per member "
                f"(asr.interop.nemo.MAX_MEMBER_BYTES)"
            )
        if total > self.max_total_bytes:
            raise NemoImportError(
                f"{self.path}: member {member.name!r} ({_size(member.size)}) brings the archive "
                f"to {_size(total)} uncompressed, over the limit of "
                f"{_size(self.max_total_bytes)} for a whole archive "
                f"(asr.interop.nemo.MAX_TOTAL_BYTES)"
            )

    def read(self, size: int) -> bytes:
        if size > self.max_member_bytes:
            raise NemoImportError(
                f"{self.path}: a tar header of {_size(size)}, over the limit of "
                f"{_size(self.max_member_bytes)} per member (asr.interop.nemo.MAX_MEMBER_BYTES)"
            )
        self._reach(self.raw.tell() + size)
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._reach(offset if whence == io.SEEK_SET else self.raw.tell() + offset)
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def _reach(self, end: int) -> None:
        if end > self.max_total_bytes:
            raise NemoImportError(
                f"{self.path} is over {_size(self.max_total_bytes)} uncompressed, the limit for "
                f"a whole archive (asr.interop.nemo.MAX_TOTAL_BYTES)"
            )


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


def _load_weights(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise NemoImportError(
            f"refusing to load {path}: its {WEIGHTS_MEMBER} is not a plain tensor file (it "
            f"would need to run pickled code, which is never done): {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:
        raise NemoImportError(f"{path}: its {WEIGHTS_MEMBER} is unreadable ({err!r})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NemoImportError(f"{path}: its {WEIGHTS_MEMBER} is not a state dict of tensors")
    return state


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

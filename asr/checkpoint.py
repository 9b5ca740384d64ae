"""The self-contained model bundle (`model.pt`) and atomic file writes.

A bundle is a plain dict of tensors and primitive values, so it loads with
`torch.load(weights_only=True)` and no pickled code ever runs:

    {"format": "asr-model-bundle", "version": 1,
     "encoder_config": {...}, "features_config": {...}, "tokenizer": {...}, "vocab_size": V,
     "model_state": CtcModel state_dict, "frontend_state": LogMelFeatures state_dict,
     "info": {...}}

Every file is written to a temporary name beside its target, flushed to disk and renamed into
place, so a process killed at any moment leaves the previous file intact; Lightning's training
checkpoints follow the same rule through `asr.training.checkpoint_io`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asr.audio import LogMelFeatures
from asr.config import EncoderConfig, FeatureConfig, from_dict, to_dict
from asr.model import AcousticModel, CtcModel
from asr.tokenizer import Tokenizer, tokenizer_from_dict

# Bundles shipped inside the package, loadable by name (`asr transcribe --model NAME`,
# `init_from: NAME`); asr/pretrained/README.md says how each was made.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
BUNDLE_FORMAT = "asr-model-bundle"
BUNDLE_VERSION = 1


class BundleError(ValueError):
    """A file that is not a usable model bundle; the message names the file."""


@dataclass
class ModelBundle:
    """Everything transcription needs: features front end, acoustic model, tokenizer."""

    model: AcousticModel  # a CtcModel, or an ONNX Runtime model (asr.inference.onnx)
    frontend: LogMelFeatures
    tokenizer: Tokenizer
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def frame_seconds(self) -> float:
        """Seconds per output frame: the front end's frame shift times the subsampling."""
        hop, rate = self.frontend.hop, self.frontend.config.sample_rate
        return hop * self.model.geometry.factor / rate

    def to(self, device: str | torch.device) -> ModelBundle:
        self.model.to(device)
        self.frontend.to(device)
        return self


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then rename tmp_path onto `path` (same folder, so same filesystem).

    The temporary file is `.{name}.XXXX.tmp`; it is synced before the rename and the folder after
    it, so the new file survives a power cut as well as a killed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: others could not read it
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def partial_files(folder: str | Path) -> list[Path]:
    """The temporary files that writes into `folder` killed before their rename left behind."""
    folder = Path(folder)
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_bundle(
    path: str | Path,
    model: CtcModel,
    frontend: LogMelFeatures,
    tokenizer: Tokenizer,
    info: dict[str, Any] | None = None,
) -> None:
    """Write `model.pt` atomically. Tensors are copied to CPU so the file loads anywhere."""
    if tokenizer.vocab_size != model.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model head has {model.vocab_size}"
        )
    bundle = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "encoder_config": to_dict(model.config),
        "features_config": to_dict(frontend.config),
        "tokenizer": tokenizer.to_dict(),
        "vocab_size": model.vocab_size,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "frontend_state": {k: v.detach().cpu() for k, v in frontend.state_dict().items()},
        "info": info or {},
    }
    atomic_torch_save(bundle, path)


def safe_torch_load(path: str | Path) -> Any:
    """`torch.load(weights_only=True)` with one clear error naming the file on any failure."""
    path = Path(path)
    if not path.is_file():
        names = ", ".join(pretrained_names()) or "none"
        raise BundleError(f"model file not found: {path} (shipped models by name: {names})")
    with path.open("rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (new format) or a raw pickle (protocol 2+: 0x80).
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise BundleError(f"cannot read {path}: not a model file (no PyTorch header)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise BundleError(
            f"refusing to load {path}: it is not a plain tensor file (it would need to run "
            f"pickled code, which is never done for safety): {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:  # any other failure of the loader means a damaged file
        raise BundleError(f"cannot read {path}: not a model file or corrupt ({err!r})") from None


def bundle_path(name: str | Path) -> Path:
    """A bundle's file: `name` itself when it exists, else the shipped bundle of that name."""
    path = Path(name)
    shipped = PRETRAINED_DIR / f"{name}.pt"
    if not path.exists() and path.suffix != ".pt" and "/" not in str(name) and shipped.is_file():
        return shipped
    return path


def pretrained_names() -> list[str]:
    """Names of the bundles shipped in asr/pretrained/."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def bundle_parts(
    raw: dict[str, Any], path: Path, damaged: str
) -> tuple[Tokenizer, EncoderConfig, FeatureConfig, int]:
    """The tokenizer, configurations and vocabulary size stored in a bundle's dict (`model.pt`,
    or the metadata of an exported `.onnx`); BundleError "<path> <damaged>: ..." when a piece is
    missing or wrong, or when the tokenizer and the CTC head disagree."""
    try:
        tokenizer = tokenizer_from_dict(raw["tokenizer"])
        encoder_config = from_dict(EncoderConfig, raw["encoder_config"], prefix="encoder")
        features_config = from_dict(FeatureConfig, raw["features_config"], prefix="features")
        vocab_size = int(raw["vocab_size"])
    except (KeyError, ValueError, TypeError) as err:
        raise BundleError(f"{path} {damaged}: {err}") from None
    if tokenizer.vocab_size != vocab_size:
        raise BundleError(
            f"{path}: its tokenizer has {tokenizer.vocab_size} tokens but its CTC head has "
            f"{vocab_size} outputs; the bundle mixes a model and a tokenizer that do not belong "
            f"together"
        )
    return tokenizer, encoder_config, features_config, vocab_size


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a bundle written by `save_bundle` (a file, or a shipped bundle's name) onto
    `device`, in eval mode."""
    path = bundle_path(path)
    raw = safe_torch_load(path)
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path} is not an asr model bundle (a Lightning checkpoint? export it with "
            f"`asr export --checkpoint {path}`)"
        )
    if raw.get("version", 0) > BUNDLE_VERSION:
        raise BundleError(f"{path} was written by a newer asr (bundle version {raw['version']})")
    tokenizer, encoder_config, features_config, vocab_size = bundle_parts(
        raw, path, "is a damaged model bundle"
    )
    model, frontend = CtcModel(encoder_config, vocab_size), LogMelFeatures(features_config)
    try:
        model.load_state_dict(raw["model_state"])
        frontend.load_state_dict(raw["frontend_state"])
    except (KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise BundleError(f"{path}: weights do not fit the stored configuration: {first}") from None
    bundle = ModelBundle(model.eval(), frontend.eval(), tokenizer, dict(raw.get("info", {})))
    return bundle.to(device)

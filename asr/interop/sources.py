"""Where a model comes from: a `model.pt` bundle, a shipped model's name, an NVIDIA NeMo `.nemo`
file or an `hf://OWNER/REPO[@REVISION][/FILE]` path on the Hugging Face Hub.

Everything that takes a model from a user (`--model`, `init_from:`, `asr.load_model`) opens it
with `open_bundle`. `asr.checkpoint.load_bundle` reads bundle files only: the NeMo importer and
the Hub client build on it, so choosing among them happens here, one layer above all three.
"""

from __future__ import annotations

from pathlib import Path

import torch

from asr.checkpoint import ModelBundle, bundle_path, load_bundle
from asr.interop.hf_hub import is_hf_path, resolve_hf

NEMO_SUFFIX = ".nemo"


def model_file(model: str | Path) -> Path:
    """The local file of `model`: an `hf://` path fetched into (or found in) the Hugging Face
    cache, a shipped model's name resolved, any other path as it is."""
    return resolve_hf(model) if is_hf_path(model) else bundle_path(model)


def open_bundle(model: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """The bundle of `model` (see `model_file`) on `device`, in eval mode; a `.nemo` file is
    converted by `asr.interop.nemo` on the way (nothing is written)."""
    path = model_file(model)
    if path.suffix.lower() == NEMO_SUFFIX and path.is_file():
        from asr.interop.nemo import import_nemo

        return import_nemo(path).to(device)
    return load_bundle(path, device)

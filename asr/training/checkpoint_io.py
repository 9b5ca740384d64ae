"""Lightning's training checkpoints written atomically and read without running pickles.

`AtomicCheckpointIO` makes Lightning's checkpoints follow the rule of `asr.checkpoint` (Lightning's
own writer stages the file in the system temp folder, which is a copy, not a rename, when that
is another filesystem, and never syncs), and loads them with `weights_only=True` like a bundle.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from asr.checkpoint import BundleError, atomic_torch_save, safe_torch_load


class AtomicCheckpointIO:
    """Lightning's `CheckpointIO` for training checkpoints: atomic, durable, never runs pickles.

    `save_checkpoint` writes with `atomic_torch_save`. `load_checkpoint` reads with
    `safe_torch_load`, so `weights_only=True` whatever Lightning asks for (and whatever
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says): resuming from a tampered `last.ckpt` is refused with a
    `BundleError` naming it. Give the Trainer `lightning_checkpoint_io()`, not this class.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Tensors are loaded on the CPU, as Lightning's default map_location does.
        checkpoint = safe_torch_load(path)
        if not isinstance(checkpoint, dict):
            raise BundleError(f"{path} is not a training checkpoint (no state dict inside)")
        return checkpoint

    def remove_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def teardown(self) -> None:
        pass


def lightning_checkpoint_io() -> AtomicCheckpointIO:
    """An `AtomicCheckpointIO` the Trainer accepts in `plugins`.

    Lightning is imported here only, so loading a model to transcribe never pays for importing
    it; registering the class as a virtual subclass of Lightning's `CheckpointIO` is what makes
    the Trainer recognise it.
    """
    from lightning.fabric.plugins import CheckpointIO

    CheckpointIO.register(AtomicCheckpointIO)
    return AtomicCheckpointIO()

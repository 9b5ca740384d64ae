"""Checks of a training config before any work starts, so a bad value fails in a second with one
message naming its keys, not minutes later inside Lightning: the manifests exist, and Lightning
accepts the trainer section's hardware settings (accelerator, devices, nodes, strategy, precision).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException

from asr.config import TrainConfig
from asr.training.hardware import resolve_precision

HARDWARE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def check_training_config(config: TrainConfig) -> None:
    """Raise FileNotFoundError for a missing manifest and ValueError for trainer settings that
    Lightning refuses (it raises MisconfigurationException, TypeError, ValueError or ImportError
    for them, from a Trainer built with those settings alone)."""
    for key in ("train_manifest", "val_manifest"):
        value = getattr(config.data, key)
        if value and "://" not in str(value) and not Path(value).is_file():
            raise FileNotFoundError(f"data.{key}: manifest file not found: {value}")
    t = config.trainer
    quiet = logging.getLogger("lightning.pytorch")  # its "GPU available" lines: at fit, once
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
                  strategy=t.strategy, precision=resolve_precision(t.precision, t.accelerator),
                  logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False)  # fmt: skip
    except (MisconfigurationException, TypeError, ValueError, ImportError) as err:
        settings = ", ".join(f"trainer.{key}={getattr(t, key)!r}" for key in HARDWARE_KEYS)
        raise ValueError(f"Lightning refuses {settings}: {err}") from None
    finally:
        quiet.setLevel(level)

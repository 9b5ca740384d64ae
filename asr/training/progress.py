"""A training progress bar over the whole run (`trainer.max_steps`), not one epoch at a time.

Lightning's own bars restart at every epoch and give the ETA of the epoch only; a user who asked
for 1000 steps wants to know when the 1000th step ends. This bar counts optimizer steps from the
resumed step to `max_steps`, shows the loss, the learning rate and the latest validation WER, and
prints one line per validation so the history stays on screen. Counted in epochs instead
(`max_steps: -1`), the total is the epochs times the batches per epoch; with a wall-clock budget
and no step limit (`max_time`), the bar counts the budget's seconds and shows the step beside it.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from rich.console import Console
from rich.progress import Progress, TextColumn

from asr.bars import stage_columns
from asr.training.system import find_timer


class StepProgressBar(ProgressBar):
    """One rich bar from the first to the last optimizer step, with an ETA for the whole run."""

    def __init__(self, console: Console | None = None) -> None:
        super().__init__()
        self.enabled = True
        self.console = console
        self._progress: Progress | None = None
        self._task: Any = None
        self._val_wer: str = "-"
        self._timer: Timer | None = None

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        total = trainer.estimated_stepping_batches  # max_steps, or epochs x batches per epoch
        self._timer = None
        if not math.isfinite(total):  # no step limit: a wall-clock budget (trainer.max_time)
            self._timer = find_timer(trainer)
            total = round(self._timer._duration)
        self._progress = Progress(
            *stage_columns("training", "s" if self._timer else "steps"),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=total, completed=self._done(trainer), metrics=""
        )

    def _done(self, trainer: L.Trainer) -> int:
        """Steps taken, or with a time budget the seconds of it spent."""
        if self._timer is None:
            return trainer.global_step
        return min(round(self._timer.time_elapsed("train")), round(self._timer._duration))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if self._progress is None:
            return
        metrics = trainer.progress_bar_metrics
        shown = []
        if "train_loss" in metrics:
            shown.append(f"loss {float(metrics['train_loss']):.3f}")
        if "lr" in metrics:
            shown.append(f"lr {float(metrics['lr']):.2e}")
        shown.append(f"val WER {self._val_wer}")
        if self._timer:
            shown.insert(0, f"step {trainer.global_step}")
        self._progress.update(self._task, completed=self._done(trainer), metrics=" ".join(shown))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val_wer" not in trainer.callback_metrics:
            return
        metrics = trainer.callback_metrics
        self._val_wer = f"{float(metrics['val_wer']):.2f}%"
        line = f"step {trainer.global_step}: val WER {self._val_wer}"
        if "val_cer" in metrics:
            line += f", CER {float(metrics['val_cer']):.2f}%"
        if "val_loss" in metrics:
            line += f", loss {float(metrics['val_loss']):.3f}"
        if self._progress is not None:
            self._progress.console.print(line)
        elif self.enabled:
            print(line, flush=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self._done(trainer))
            self._progress.stop()
            self._progress = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

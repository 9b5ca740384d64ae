"""The LightningModule: the training harness around `CtcModel` (and nothing else).

One batch: waves -> log-mel features (float32) -> SpecAugment -> CtcModel -> CTC loss in float32.
Validation decodes greedily and sums word and character error counts over the whole set (and over
ranks) before dividing, with the same text normalizer as `asr evaluate`.

A batch that cannot be trained on (empty: every utterance failed to load; or a non-finite loss)
is skipped on every rank at once, never on one alone, which would leave the others waiting in
DDP's gradient all-reduce: the ranks agree through a summed flag, all run a zero-weighted
backward, none lets its optimizer step. `skipped_steps` counts such steps in the logs.

Randomness is exactly resumable by construction: every training step re-seeds the global RNGs
from (seed, global step, rank), so dropout and SpecAugment masks of step k never depend on what
ran before it, and waveform augmentation is seeded per (seed, epoch, utterance) in the dataset.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from asr.audio import LogMelFeatures
from asr.augment import SpecAugment
from asr.config import TrainConfig, max_time_seconds, to_dict
from asr.inference.decoding import greedy_decode
from asr.model import CtcModel, ctc_loss, ctc_objective, distilled_objective
from asr.modules.attention import RelativePositionalEncoding
from asr.scoring.metrics import ErrorCounts, count_char_errors, count_word_errors
from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_BAD_STEPS = 20


class NonFiniteLossError(RuntimeError):
    """Training diverged: the loss kept being NaN or infinite."""


def lr_lambda(
    step: int,
    warmup: int,
    schedule: str,
    max_steps: int,
    min_ratio: float,
    time_fraction: float | None = None,
) -> float:
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then Noam (1/sqrt) or cosine decay.

    The cosine runs from the end of warm-up to `max_steps`, or, for a wall-clock budget, over
    `time_fraction` (the share of trainer.max_time spent; the warm-up's own share, about 3% of
    a 30-minute budget, is not subtracted) when that is further along.
    """
    step = step + 1
    if step <= warmup:
        return step / max(1, warmup)
    if schedule == "noam":
        return max(min_ratio, math.sqrt(warmup / step))
    progress = (step - warmup) / max(1, max_steps - warmup) if max_steps > 0 else 0.0
    progress = min(1.0, max(progress, time_fraction or 0.0))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def find_timer(trainer: L.Trainer) -> Timer | None:
    """The Trainer's wall-clock Timer callback (asr.training.train always adds one)."""
    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)


class AsrSystem(L.LightningModule):
    """Train a `CtcModel` with CTC; `config` and `tokenizer` are stored in every checkpoint."""

    def __init__(self, config: TrainConfig, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.frontend = LogMelFeatures(config.features)
        self.spec_augment = SpecAugment.from_config(config.augment)
        self.model = CtcModel(config.encoder_config(), tokenizer.vocab_size)
        frozen = config.optim.freeze_blocks
        if frozen:  # fine-tuning: the subsampling and the first blocks keep their weights
            for module in (self.model.encoder.subsampling, *self.model.encoder.blocks[:frozen]):
                module.requires_grad_(False)
        # The relative-position table grows to the longest input a process has seen: a cache,
        # not state, whose shape differs between DDP ranks; DDP must not broadcast it.
        self._ddp_params_and_buffers_to_ignore = [
            f"{name}.table"
            for name, module in self.named_modules()
            if isinstance(module, RelativePositionalEncoding)
        ]
        self.val_words = ErrorCounts()
        self.val_chars = ErrorCounts()
        self.bad_steps = 0  # consecutive steps with a non-finite loss on some rank
        self.skipped_steps = 0
        self._skip_update = False  # this step was skipped: the optimizer must not step
        budget = config.trainer.max_time
        self._budget_seconds = max_time_seconds(budget) if budget is not None else None

    # ---------------------------------------------------------------- training
    def on_train_epoch_start(self) -> None:
        # A streamed training set has no sampler for Lightning to tell the epoch to.
        start_epoch = getattr(self.trainer.datamodule, "start_epoch", None)
        if start_epoch is not None:
            start_epoch(self.current_epoch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed = self.config.trainer.seed
        torch.manual_seed(hash((seed, self.global_step, self.global_rank)) % (2**63))

    def features(self, batch: Any, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            feats, feat_lengths = self.frontend(batch.waves, batch.wave_lengths)  # (B, T, F)
            if augment:
                feats = self.spec_augment(feats, feat_lengths)
        return feats, feat_lengths

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._skip_update = False
        empty = batch is None or not len(batch)  # every utterance failed to load (already warned)
        loss: torch.Tensor | None = None
        if not empty:
            norm_stats = self._running_stats()
            feats, feat_lengths = self.features(batch, augment=True)
            optim = self.config.optim
            args = (feats, feat_lengths, batch.targets, batch.target_lengths)
            if optim.distilled:
                loss, parts = distilled_objective(
                    self.model, *args, optim.inter_ctc_weight, optim.distill_weight, optim.dual_mode
                )
            else:
                loss, parts = ctc_objective(self.model, *args, optim.inter_ctc_weight)
        nonfinite = loss is not None and not bool(torch.isfinite(loss))
        ranks = self._bad_ranks(empty, nonfinite)
        if any(ranks):
            if not empty:  # the forward pass has already folded this batch into the batch norms
                self.model.load_state_dict(norm_stats, strict=False)
            loss = self._skip_step(batch, empty, nonfinite, ranks)
        else:
            self.bad_steps = 0
            self.log("train_loss", loss, prog_bar=True, batch_size=len(batch))
            if len(parts) > 1:  # the parts of the objective, to see each one learn
                for name, value in parts.items():
                    self.log(f"train_{name}", value, batch_size=len(batch))
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True)
        self.log("skipped_steps", float(self.skipped_steps))
        return loss

    def _bad_ranks(self, empty: bool, nonfinite: bool) -> tuple[int, int]:
        """How many ranks have an empty batch, how many a non-finite loss: every rank must agree
        to skip a step, or the others would wait forever in DDP's gradient all-reduce."""
        flags = torch.tensor([float(empty), float(nonfinite)], device=self.device)
        if self.trainer.world_size > 1:
            flags = self.trainer.strategy.reduce(flags, reduce_op="sum")
        empty_ranks, nonfinite_ranks = flags.tolist()
        return int(empty_ranks), int(nonfinite_ranks)

    def _running_stats(self) -> dict[str, torch.Tensor]:
        """Copies of the model's batch-norm buffers (running mean/var, batch count): small."""
        return {
            k: v.clone()
            for k, v in self.model.named_buffers()
            if "running_" in k or "num_batches" in k
        }

    def _skip_step(
        self, batch: Any, empty: bool, nonfinite: bool, ranks: tuple[int, int]
    ) -> torch.Tensor:
        """Count and report a step skipped on every rank (`ranks`: how many had an empty batch,
        how many a non-finite loss). Its loss is a zero-weighted sum of every trainable
        parameter, so backward (and DDP's all-reduce) still runs on every rank; then
        `on_before_optimizer_step` drops the zero gradients and the optimizer leaves the step
        out (zero gradients would still move AdamW's weights through its moments and weight
        decay). The learning-rate schedule steps as usual, on every rank alike."""
        self._skip_update = True
        self.skipped_steps += 1
        if ranks[1]:  # empty batches are bad data, not divergence
            self.bad_steps += 1
        step, world = self.global_step, self.trainer.world_size
        if empty:
            reason = f"empty batch at step {step} (every utterance failed to load)"
        elif nonfinite:
            reason = f"non-finite loss at step {step} (utterances {', '.join(batch.ids[:5])})"
        else:
            reason = (
                f"at step {step}, {ranks[0]} of {world} ranks had an empty batch and {ranks[1]} "
                f"a non-finite loss"
            )
        skipped = "batch skipped" if world == 1 else f"step skipped on all {world} ranks"
        log.warning("%s: %s (%d skipped so far)", reason, skipped, self.skipped_steps)
        if self.bad_steps >= MAX_CONSECUTIVE_BAD_STEPS:
            raise NonFiniteLossError(
                f"the loss was NaN or infinite for {self.bad_steps} steps in a row; training "
                f"has diverged (try a lower optim.lr or longer optim.warmup_steps)"
            )
        return sum((p * 0).sum() for p in self.parameters() if p.requires_grad)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_update:  # no gradient, no update: AdamW leaves such parameters alone
            optimizer.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self.val_words, self.val_chars = ErrorCounts(), ErrorCounts()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch is None or not len(batch):
            return
        feats, feat_lengths = self.features(batch, augment=False)
        log_probs, out_lengths = self.model(feats, feat_lengths)
        loss = ctc_loss(log_probs, out_lengths, batch.targets, batch.target_lengths)
        self.log("val_loss", loss, batch_size=len(batch), sync_dist=True)
        for ref, ids in zip(batch.texts, greedy_decode(log_probs, out_lengths)):
            hyp = self.tokenizer.decode(ids)
            self.val_words += count_word_errors(ref, hyp)
            self.val_chars += count_char_errors(ref, hyp)

    def on_validation_epoch_end(self) -> None:
        words = self.val_words.to_tensor(self.device)
        chars = self.val_chars.to_tensor(self.device)
        if self.trainer.world_size > 1:  # sum counts over ranks, then divide: never average rates
            words = self.all_gather(words).sum(0)
            chars = self.all_gather(chars).sum(0)
        words, chars = ErrorCounts.from_tensor(words), ErrorCounts.from_tensor(chars)
        if words.ref_words == 0:  # nothing was scored: report the worst rate, never a false 0%
            log.warning("validation at step %d scored no reference words", self.global_step)
        wer = words.error_rate if words.ref_words else 1.0
        cer = chars.error_rate if chars.ref_words else 1.0
        # Every rank holds the same summed counts, so every rank logs the same value.
        self.log("val_wer", 100 * wer, prog_bar=True)
        self.log("val_cer", 100 * cer, prog_bar=True)
        # Wall-clock seconds of training so far (resumed runs included): when a run left the
        # blank-only plateau, read from logs/csv/metrics.csv.
        timer = find_timer(self.trainer)
        if timer is not None and timer.start_time("train") is not None:
            self.log("train_seconds", timer.time_elapsed("train"))

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make every Lightning checkpoint self-describing: config and tokenizer travel inside."""
        checkpoint["asr_config"] = to_dict(self.config)
        checkpoint["asr_tokenizer"] = self.tokenizer.to_dict()

    # ---------------------------------------------------------------- optimizer
    def time_fraction(self) -> float | None:
        """Share of trainer.max_time spent so far (resumed runs included), None without one."""
        if self._budget_seconds is None:
            return None
        timer = find_timer(self.trainer)
        if timer is None or timer.start_time("train") is None:
            return 0.0
        return min(1.0, timer.time_elapsed("train") / self._budget_seconds)

    def configure_optimizers(self) -> Any:
        o = self.config.optim
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:  # frozen blocks (optim.freeze_blocks)
                continue
            # Biases, norms and the attention biases u, v are not decayed.
            decayed = param.ndim >= 2 and "pos_bias" not in name
            groups.setdefault((name.startswith("encoder."), decayed), []).append(param)
        optimizer = torch.optim.AdamW(
            [
                {
                    "params": params,
                    "weight_decay": o.weight_decay if decayed else 0.0,
                    "lr": o.lr * (o.encoder_lr_scale if encoder else 1.0),
                }
                for (encoder, decayed), params in sorted(groups.items())
            ],
            lr=o.lr,
            betas=o.betas,
        )
        # The schedule runs over max_steps when there are any (max_time then only stops a slow
        # machine early, and a fast one computes exactly what it would without it), else over
        # max_time, else over a long default.
        max_steps = self.trainer.max_steps
        over_time = max_steps <= 0 and self.config.trainer.max_time is not None
        if max_steps <= 0 and not over_time:
            max_steps = 100_000
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_lambda(
                step,
                o.warmup_steps,
                o.schedule,
                max_steps,
                o.min_lr_ratio,
                self.time_fraction() if over_time else None,
            ),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

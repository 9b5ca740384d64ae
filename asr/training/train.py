"""`asr train`: from a config to an experiment folder holding a self-contained `model.pt`.

    exp_dir/config.yaml        the resolved configuration (every default written out)
    exp_dir/tokenizer.json     trained from the training transcripts unless tokenizer.path is set
    exp_dir/checkpoints/       top-k by validation WER, the last k by step, and last.ckpt
    exp_dir/logs/              TensorBoard and CSV logs
    exp_dir/model.pt           weights (averaged over the last k checkpoints), config, tokenizer,
                               normalization statistics: all transcription needs

Running the same command again resumes from `checkpoints/last.ckpt` exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from asr.audio import AudioError, LogMelFeatures, compute_global_stats, load_audio, load_audio_array
from asr.checkpoint import partial_files, safe_torch_load, save_bundle
from asr.config import TrainConfig, from_dict, save_config
from asr.data.hf import load_hf_utterances
from asr.data.manifest import read_manifest
from asr.interop.sources import open_bundle
from asr.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_dict, train_tokenizer
from asr.training.checkpoint_io import lightning_checkpoint_io
from asr.training.datamodule import AsrDataModule
from asr.training.hardware import cpu_model, resolve_precision
from asr.training.progress import StepProgressBar
from asr.training.system import AsrSystem

log = logging.getLogger(__name__)

GLOBAL_STATS_UTTERANCES = 500
# Running words of English pseudo-text a `tokenizer.text: english` tokenizer learns from (every
# word of the 72k vocabulary at least once, the rest in proportion to frequency).
ENGLISH_TOKENIZER_WORDS = 300_000


def prepare_tokenizer(config: TrainConfig, exp_dir: Path) -> Tokenizer:
    """The experiment's tokenizer: given, reused from an earlier run, the `init_from` bundle's
    (unless the config asks for other units: `_bundle_tokenizer`), or trained now."""
    saved = exp_dir / "tokenizer.json"
    if config.tokenizer.path:
        tokenizer = load_tokenizer(config.tokenizer.path)
    elif saved.is_file():
        tokenizer = load_tokenizer(saved)
    elif (inherited := _bundle_tokenizer(config)) is not None:
        tokenizer = inherited
    elif config.tokenizer.text == "english":
        from asr.inference.english import english_sentences, read_sphinx_unigrams, sphinx_lm_path

        words = read_sphinx_unigrams(sphinx_lm_path())
        texts = [" ".join(s) for s in english_sentences(words, ENGLISH_TOKENIZER_WORDS)]
        tokenizer = train_tokenizer(texts, config.tokenizer)
    else:
        if not config.data.train_manifest:
            raise ValueError("set data.train_manifest or tokenizer.path to get a tokenizer")
        texts = [utt.text for utt in read_manifest(config.data.train_manifest)]
        tokenizer = train_tokenizer(texts, config.tokenizer)
    tokenizer.save(saved)
    return tokenizer


def _bundle_tokenizer(config: TrainConfig) -> Tokenizer | None:
    """The `init_from` bundle's tokenizer, unless the config asks for another: subword units
    (`tokenizer.kind` unigram or bpe, not the default "char") of another kind than the
    bundle's, or units learned from English text. Then None: a new tokenizer is trained and the
    bundle's head keeps only the rows of the pieces both tokenizers have. (The default kind
    asks for nothing: a NeMo model's BPE tokenizer is kept under a config that names none.)"""
    if not config.init_from or config.tokenizer.text != "train":
        return None
    tokenizer = open_bundle(config.init_from).tokenizer
    wanted = config.tokenizer.kind
    return tokenizer if wanted == "char" or tokenizer.kind == wanted else None


def estimate_global_stats(config: TrainConfig, frontend: LogMelFeatures) -> None:
    """Mean and std of the features over the first (up to 500) training utterances, of the
    manifest or else of the Hugging Face dataset (read as a stream: nothing else is fetched),
    stored in frontend."""
    raw = LogMelFeatures(dataclasses.replace(config.features, normalize="none"))

    def batches():
        for wave in _training_waves(config):
            yield raw(wave[None], torch.tensor([wave.shape[0]]))

    mean, std = compute_global_stats(batches())
    frontend.set_global_stats(mean, std)


def _training_waves(config: TrainConfig) -> Iterator[torch.Tensor]:
    """The first `GLOBAL_STATS_UTTERANCES` training utterances as mono (N,) tensors at the
    features' rate; rows of a dataset whose audio cannot be decoded are skipped."""
    rate, data = config.features.sample_rate, config.data
    if data.train_manifest:
        for utt in read_manifest(data.train_manifest)[:GLOBAL_STATS_UTTERANCES]:
            yield load_audio(utt.audio, rate, utt.offset, utt.duration)
        return
    if not data.hf_dataset:
        raise ValueError("features.normalize global or running needs training data to "
                         "estimate its statistics: set data.train_manifest or data.hf_dataset")  # fmt: skip
    rows = load_hf_utterances(data.hf_dataset, data.hf_train_split, streaming=True)
    for index, row in enumerate(itertools.islice(rows.dataset, GLOBAL_STATS_UTTERANCES)):
        try:
            item = rows.decode(row, index)
        except AudioError:
            continue
        yield load_audio_array(item["array"], item["sampling_rate"], rate, name=item["id"])


# Parameters indexed by token: (name, dimension of the token index). With another tokenizer
# the rows of the pieces both vocabularies share are copied; the others keep their fresh init.
VOCAB_PARAMETERS = (("head.weight", 0), ("head.bias", 0), ("condition.weight", 1))
# Front-end fields that change the log-mel values a little but not their bands, frame rate or,
# once normalized, their scale (sherpa-onnx's front end against ours): a normalized bundle may be
# fine-tuned under another choice of them, with a warning naming each.
FRONT_END_VARIANTS = {"framing", "preemphasis", "mel_scale", "log_guard", "log_offset", "window"}
# Encoder fields of the global-style-token layer, which fine-tuning may add to a bundle.
STYLE_FIELDS = ("style_tokens", "num_style_tokens", "style_token_heads")
# How dynamic chunk training draws a batch's chunk: no weight, nothing at inference.
CHUNK_DRAW_FIELDS = ("max_chunk_frames", "min_chunk_frames", "full_context_prob")


def field_differences(section: str, mine: Any, theirs: Any, skip: set[str]) -> list[str]:
    """`section.field: bundle's value in the bundle, this value here` for each field of two
    config dataclasses that differs, but those in `skip`."""
    return [f"{section}.{f.name}: {getattr(theirs, f.name)!r} in the bundle, "
            f"{getattr(mine, f.name)!r} here" for f in dataclasses.fields(mine)
            if f.name not in skip and getattr(mine, f.name) != getattr(theirs, f.name)]  # fmt: skip


def initialize_from(system: AsrSystem, path: str | Path) -> list[str]:
    """Copy a bundle's model weights into `system` before training; returns the pieces of the
    system's tokenizer that the bundle's tokenizer lacks (their CTC head rows start fresh).

    The encoder configuration (but dropout and the streaming fields) and the front end must match
    the bundle's: a difference is a ValueError naming the field, never a silently partial load.
    Between two normalized front ends the normalization and `FRONT_END_VARIANTS` (framing,
    pre-emphasis, mel scale, log guard: e.g. sherpa-onnx's front end) may differ, with a warning.
    With another tokenizer the encoder is copied whole and the head (and self-conditioning
    projection) row by row for the pieces both tokenizers have (the blank, and e.g. the letters
    of two character sets).

    One layer may be added: global style tokens (`encoder.style_tokens`) on a bundle trained
    without them. The new layer starts fresh with its value projection zeroed, so its embedding
    is 0 and the model computes exactly what the bundle did until training moves it.
    """
    bundle = open_bundle(path)
    mine, theirs = system.model.config, bundle.model.config
    # Fields that change no weight and no computation at inference may differ: dropout, and how
    # training draws chunks. A causal or chunked convolution has the same weights as a centred
    # one, so an offline model can be fine-tuned into a streaming one (chunk_conv or causal_conv,
    # with dynamic chunks).
    free = {"causal_conv", "chunk_conv", "dynamic_chunk_training", *CHUNK_DRAW_FIELDS}
    adding_style = mine.style_tokens and not theirs.style_tokens
    if adding_style:
        free |= set(STYLE_FIELDS)
    free |= {f.name for f in dataclasses.fields(mine) if "dropout" in f.name}
    differ = field_differences("encoder", mine, theirs, free)
    # The front end may normalize otherwise, as long as both normalize: per utterance or with
    # the training set's statistics, the bands have zero mean and unit variance; raw log-mels
    # have another scale.
    features, their_features = system.frontend.config, bundle.frontend.config
    normalized = features.normalize != "none" and their_features.normalize != "none"
    skip = {"running_prior_frames"} | ({"normalize", *FRONT_END_VARIANTS} if normalized else set())
    differ += field_differences("features", features, their_features, skip)
    if differ:
        raise ValueError(f"init_from {path}: the model does not match the config: {differ[0]}")
    variants = field_differences("features", features, their_features, skip - FRONT_END_VARIANTS)
    if variants:
        log.warning("init_from %s: the front end differs from the bundle's (%s); fine-tuning "
                    "adapts the model to it", path, "; ".join(variants))  # fmt: skip
    state = bundle.model.state_dict()
    if adding_style:
        fresh = {
            k: v for k, v in system.model.state_dict().items() if k.startswith("encoder.style.")
        }
        fresh["encoder.style.attention.value.weight"].zero_()
        state.update(fresh)
    if bundle.tokenizer.to_dict() == system.tokenizer.to_dict():
        system.model.load_state_dict(state)
        return []
    old = {bundle.tokenizer.id_to_piece(i): i for i in range(bundle.tokenizer.vocab_size)}
    new = [system.tokenizer.id_to_piece(i) for i in range(system.tokenizer.vocab_size)]
    shared = [(i, old[piece]) for i, piece in enumerate(new) if piece in old]
    target = system.model.state_dict()
    for name, dim in VOCAB_PARAMETERS:
        if name in state:
            rows = state.pop(name).index_select(dim, torch.tensor([j for _, j in shared]))
            target[name].index_copy_(dim, torch.tensor([i for i, _ in shared]), rows)
            state[name] = target[name]
    system.model.load_state_dict(state)
    return [piece for piece in new if piece not in old]


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of Lightning checkpoints (integer buffers: last)."""
    if not paths:
        raise ValueError("no checkpoints to average")
    states = [safe_torch_load(p)["state_dict"] for p in paths]
    averaged = {}
    for key, value in states[-1].items():
        if value.is_floating_point():
            averaged[key] = sum(s[key].double() for s in states).div(len(states)).to(value.dtype)
        else:
            averaged[key] = value.clone()
    return averaged


def build_trainer(
    config: TrainConfig, exp_dir: Path, extra_callbacks: Sequence[L.Callback] = ()
) -> tuple[L.Trainer, ModelCheckpoint, ModelCheckpoint]:
    t = config.trainer
    ckpt_dir = exp_dir / "checkpoints"
    for partial in partial_files(ckpt_dir):  # a save killed before its rename: never loaded
        log.warning("removing %s, left by a checkpoint save that was interrupted", partial)
        partial.unlink(missing_ok=True)
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-{step}-{val_wer:.2f}",
        monitor="val_wer",
        mode="min",
        save_top_k=t.save_top_k,
        auto_insert_metric_name=True,
    )
    # last.ckpt (where a rerun resumes) follows the every-so-many-steps checkpoints: on `best`
    # it was rewritten only when val_wer made the top k, so a killed run resumed from an old step.
    recent = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step-{step}",
        monitor="step",
        mode="max",
        save_top_k=max(1, t.average_last_k),
        every_n_train_steps=t.val_every_n_steps or None,
        save_last=True,
    )
    # Lightning's own wall-clock budget (what Trainer(max_time=...) adds), always present so that
    # the elapsed training time is logged at each validation and kept in checkpoints.
    timer = Timer(duration=t.max_time, interval="step")
    callbacks: list[Any] = [best, recent, LearningRateMonitor(logging_interval="step"), timer]
    callbacks += extra_callbacks  # e.g. bench/step_drift.py's per-step probe
    if t.progress_bar:
        callbacks.append(StepProgressBar())
    val_every = t.val_every_n_steps
    trainer = L.Trainer(
        default_root_dir=exp_dir,
        max_steps=t.max_steps,
        max_epochs=t.max_epochs if t.max_steps < 0 and t.max_time is None else -1,
        precision=resolve_precision(t.precision, t.accelerator),
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        gradient_clip_val=config.optim.grad_clip,
        val_check_interval=val_every if val_every else 1.0,
        check_val_every_n_epoch=None if val_every else 1,
        log_every_n_steps=t.log_every_n_steps,
        logger=[
            TensorBoardLogger(exp_dir / "logs", name="tensorboard", version=""),
            CSVLogger(exp_dir / "logs", name="csv", version=""),
        ],
        callbacks=callbacks,
        # Checkpoints written atomically (temp file, fsync, rename), loaded with weights_only.
        plugins=[lightning_checkpoint_io()],
        use_distributed_sampler=False,  # our bucketing sampler shards by rank itself
        num_sanity_val_steps=0,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=t.progress_bar,
        deterministic=False,
    )
    return trainer, best, recent


def train(config: TrainConfig, resume: bool = True, callbacks: Sequence[L.Callback] = ()) -> Path:
    """Train and export; returns the path of `model.pt`. `callbacks`: Lightning callbacks added
    to the trainer's own (checkpoints, learning-rate monitor, wall-clock budget)."""
    exp_dir = Path(config.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, exp_dir / "config.yaml")
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    tokenizer = prepare_tokenizer(config, exp_dir)
    system = AsrSystem(config, tokenizer)
    last = exp_dir / "checkpoints" / "last.ckpt"
    resuming = resume and last.is_file()
    if config.init_from and not resuming:
        fresh = initialize_from(system, config.init_from)
        log.info("weights from %s%s", config.init_from,
                 f"; new tokenizer: {', '.join(fresh)} start from scratch" if fresh else "")  # fmt: skip
    # Global statistics (also the prior of "running") come from this run's training data, also
    # when fine-tuning: the encoder was trained on normalized features, and the new data's own
    # statistics normalize it so.
    if config.features.normalize in ("global", "running") and not resuming:
        estimate_global_stats(config, system.frontend)

    def frames_for_duration(seconds: float) -> int:
        samples = int(seconds * config.features.sample_rate)
        return int(system.model.output_lengths(torch.tensor(system.frontend.num_frames(samples))))

    datamodule = AsrDataModule(config, tokenizer, frames_for_duration)
    trainer, best, recent = build_trainer(config, exp_dir, callbacks)
    started = time.time()
    trainer.fit(system, datamodule=datamodule, ckpt_path=str(last) if resuming else None)
    seconds = time.time() - started
    return export(config, system, trainer, recent, best, seconds)


def export(
    config: TrainConfig,
    system: AsrSystem,
    trainer: L.Trainer,
    recent: ModelCheckpoint,
    best: ModelCheckpoint,
    seconds: float,
) -> Path:
    exp_dir = Path(config.exp_dir)
    k = config.trainer.average_last_k
    # `recent` monitors "step", so each kept checkpoint's score is its step: oldest first.
    paths = [Path(p) for p in sorted(recent.best_k_models, key=recent.best_k_models.get)]
    averaged = paths[-k:] if k > 1 and len(paths) > 1 else []
    info = {
        "trained_steps": int(trainer.global_step),
        "train_seconds": round(seconds, 1),
        "cpu": cpu_model(),
        "precision": str(trainer.precision),
        "averaged_checkpoints": [p.name for p in paths[-k:]] if k > 1 else [],
        "best_val_wer": float(best.best_model_score) if best.best_model_score is not None else None,
        "config": str(exp_dir / "config.yaml"),
    }
    path = exp_dir / "model.pt"
    if trainer.is_global_zero:
        write_bundle(system, averaged, path, info)
    return path


def write_bundle(system: AsrSystem, average: Sequence[Path], output: str | Path,
                 info: dict[str, Any]) -> Path:  # fmt: skip
    """The one bundle writer: `system` (with the average of the checkpoints `average` loaded
    into it, when there are more than one) -> a `model.pt` bundle at `output` with `info`."""
    if len(average) > 1:
        system.load_state_dict(average_checkpoints(list(average)))
    save_bundle(output, system.model, system.frontend, system.tokenizer, info)
    return Path(output)


def export_checkpoint(checkpoints: str | Path | Sequence[str | Path], output: str | Path) -> Path:
    """Lightning checkpoint(s) of `AsrSystem` -> a `model.pt` bundle (`asr export`).

    Several checkpoints of one run are averaged (`average_checkpoints`); the configuration and
    tokenizer come from the last one.
    """
    paths = (
        [Path(checkpoints)] if isinstance(checkpoints, str | Path) else list(map(Path, checkpoints))
    )
    if not paths:
        raise ValueError("no checkpoints to export")
    raw = safe_torch_load(paths[-1])
    if not isinstance(raw, dict) or "asr_config" not in raw:
        raise ValueError(f"{paths[-1]} is not a checkpoint written by `asr train`")
    config = from_dict(TrainConfig, raw["asr_config"])
    system = AsrSystem(config, tokenizer_from_dict(raw["asr_tokenizer"]))
    system.load_state_dict(raw["state_dict"])
    info = {"from": [str(p) for p in paths] if len(paths) > 1 else str(paths[0])}
    return write_bundle(system, paths, output, info)

"""The LightningDataModule: manifests (or a Hugging Face dataset) -> filtered, bucketed batches.

Unusable utterances are dropped before training with one warning per reason (see
`asr.data.manifest.filter_utterances`); audio that fails to load mid-epoch is skipped by the dataset.
The batch sampler's position in the epoch is saved in every checkpoint, so a resumed run sees
exactly the batches an uninterrupted run would have seen. A streamed dataset
(`data.hf_streaming=true`, `asr.data.stream`) has no sampler: there the position of the last
batch trained from each reader, on every rank, is saved instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from asr.augment import WaveAugment
from asr.config import TrainConfig
from asr.data.dataset import AudioDataset, Batch, collate
from asr.data.hf import HFAudioDataset, load_hf_utterances
from asr.data.manifest import Utterance, filter_utterances, read_manifest
from asr.data.sampler import DurationBucketSampler
from asr.data.stream import StreamingAudioDataset, collate_stream
from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class EpochTaggedSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Tags each index with the sampler's epoch, so worker processes know the epoch too.

    DataLoader workers hold copies of the dataset; passing (epoch, index) pairs is the one way
    to get the epoch (which seeds waveform augmentation) to them reliably.
    """

    def __init__(self, sampler: DurationBucketSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield [(self.sampler.epoch, i) for i in batch]


class EpochAwareDataset(Dataset):
    def __init__(self, dataset: AudioDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


class AsrDataModule(L.LightningDataModule):
    """Train/validation loaders for `AsrSystem`.

    `frames_for_duration(seconds) -> encoder frames` lets the filter drop audio too short for
    its transcript under CTC.
    """

    def __init__(
        self,
        config: TrainConfig,
        tokenizer: Tokenizer,
        frames_for_duration: Callable[[float], int],
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.frames_for_duration = frames_for_duration
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.train_sampler: DurationBucketSampler | None = None
        self._sampler_state: dict[str, int] | None = None
        self.train_stream: StreamingAudioDataset | None = None
        self._stream_state: dict[str, Any] | None = None  # loaded, not yet handed to the stream
        self._positions: dict[int, dict[str, Any]] = {}  # worker -> last batch trained from it
        self._last_worker: int | None = None
        self._epoch = 0  # the stream epoch of the batches trained last (of `_positions`)

    # ---------------------------------------------------------------- data
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        d = self.config.data
        if d.hf_dataset:
            self.train_set = self._hf_dataset(d.hf_train_split, train=True)
            self.val_set = self._hf_dataset(d.hf_val_split, train=False)
            return
        if not d.train_manifest:
            raise ValueError("data.train_manifest is not set (or set data.hf_dataset)")
        self.train_set = self._manifest_dataset(d.train_manifest, train=True)
        self.val_set = (
            self._manifest_dataset(d.val_manifest, train=False) if d.val_manifest else None
        )

    def usable(self, path: str) -> list[Utterance]:
        d = self.config.data
        kept, _skipped = filter_utterances(
            read_manifest(path),
            self.tokenizer,
            self.frames_for_duration,
            min_duration=d.min_duration,
            max_duration=d.max_duration,
        )
        if not kept:
            raise ValueError(f"no usable utterances in {path} (see the warnings above)")
        return kept

    def _manifest_dataset(self, path: str, train: bool) -> AudioDataset:
        augment = (
            WaveAugment(self.config.augment, self.config.features.sample_rate) if train else None
        )
        return AudioDataset(
            self.usable(path),
            self.tokenizer,
            sample_rate=self.config.features.sample_rate,
            wave_augment=augment,
            seed=self.config.trainer.seed,
        )

    def _hf_dataset(self, split: str, train: bool) -> Dataset:
        d, rate, seed = self.config.data, self.config.features.sample_rate, self.config.trainer.seed
        source = load_hf_utterances(d.hf_dataset, split, streaming=d.hf_streaming)
        augment = WaveAugment(self.config.augment, rate) if train else None
        if not d.hf_streaming:
            return HFAudioDataset(source, self.tokenizer, rate, wave_augment=augment, seed=seed)
        trainer = self.trainer
        return StreamingAudioDataset(
            source, self.tokenizer, d.max_batch_seconds, shuffle_buffer=d.shuffle_buffer,
            shuffle=train, min_duration=d.min_duration, max_duration=d.max_duration,
            frames_for_duration=self.frames_for_duration, sample_rate=rate, wave_augment=augment,
            seed=seed, num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0, num_workers=d.num_workers,
        )  # fmt: skip

    # ---------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        d = self.config.data
        workers = d.num_workers
        # Its own generator: creating the loader's iterator must not draw from the global RNG,
        # or a resumed run would diverge from an uninterrupted one.
        generator = torch.Generator().manual_seed(self.config.trainer.seed)
        common = dict(
            collate_fn=collate,
            num_workers=workers,
            generator=generator,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
        if isinstance(dataset, StreamingAudioDataset):
            if train:
                self._resume_stream(dataset)
            common.update(collate_fn=collate_stream)
            return DataLoader(dataset, batch_size=None, **common)
        trainer = self.trainer
        sampler = DurationBucketSampler(
            dataset.durations(),
            d.max_batch_seconds,
            num_buckets=d.num_buckets,
            shuffle=train,
            seed=self.config.trainer.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )
        if train:
            if self._sampler_state is not None:
                sampler.load_state_dict(self._sampler_state)
                self._sampler_state = None
            self.train_sampler = sampler
            return DataLoader(
                EpochAwareDataset(dataset), batch_sampler=EpochTaggedSampler(sampler), **common
            )
        return DataLoader(dataset, batch_sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, train=False) if self.val_set is not None else []

    # ---------------------------------------------------------------- exact resume
    def state_dict(self) -> dict[str, Any]:
        """The sampler position as batches *trained on* (the loader's prefetching runs ahead)."""
        if self.train_stream is not None:
            return self._stream_state_dict()
        if self.train_sampler is None or self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.train_sampler.epoch, "num_yielded": progress.processed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and "stream" in state:
            self._stream_state = state["stream"]
        else:
            self._sampler_state = dict(state) if state else None

    # ---------------------------------------------------------------- exact resume: streams
    def start_epoch(self, epoch: int) -> None:
        """Called as each training epoch starts (Lightning tells only samplers the epoch).

        The stream's next epoch follows the one whose batches were trained last, not Lightning's
        count: a checkpoint written when `max_steps` stops a run mid-epoch holds Lightning's
        epoch already advanced, and a resumed run would otherwise skip an epoch of data."""
        if self.train_stream is not None:
            self.train_stream.set_epoch(self._epoch + 1 if self._positions else self._epoch)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Note where each streamed training batch came from: it is about to be trained on."""
        trainer = self.trainer
        if isinstance(batch, Batch) and batch.position is not None and trainer and trainer.training:
            if batch.position["epoch"] != self._epoch:
                self._epoch, self._positions = batch.position["epoch"], {}
            self._positions[batch.position["worker"]] = batch.position
            self._last_worker = batch.position["worker"]
        return batch

    def _stream_state_dict(self) -> dict[str, Any]:
        """Every rank's positions: each rank streams its own readers (a collective call: Lightning
        builds a checkpoint on every rank)."""
        assert self.train_stream is not None
        progress = self.trainer.fit_loop.epoch_loop.batch_progress if self.trainer else None
        mine = {"epoch": self._epoch, "positions": self._positions,
                "last_worker": self._last_worker,
                "epoch_done": bool(progress is not None and progress.is_last_batch)}  # fmt: skip
        ranks = [mine]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        return {"stream": {"num_workers": self.train_stream.num_workers, "ranks": ranks}}

    def _resume_stream(self, dataset: StreamingAudioDataset) -> None:
        self.train_stream, saved, self._stream_state = dataset, self._stream_state, None
        if saved is None:
            return
        ranks, rank = saved["ranks"], dataset.rank
        if len(ranks) != dataset.num_replicas or saved["num_workers"] != dataset.num_workers:
            log.warning(
                "the checkpoint streamed on %d process(es) with %d worker(s) each, this run on "
                "%d with %d: its epoch restarts from the beginning", len(ranks),
                saved["num_workers"], dataset.num_replicas, dataset.num_workers,
            )  # fmt: skip
            dataset.set_epoch(ranks[0]["epoch"])
            return
        mine = ranks[rank]
        if mine["epoch_done"]:  # saved after the epoch's last batch: resume with the next one
            self._epoch = mine["epoch"] + 1
            dataset.set_epoch(self._epoch)
            return
        self._epoch = mine["epoch"]
        self._positions, self._last_worker = dict(mine["positions"]), mine["last_worker"]
        next_worker = 0 if self._last_worker is None else self._last_worker + 1
        dataset.resume_from(mine["epoch"], self._positions, next_worker)

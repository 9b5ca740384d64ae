"""The LightningDataModule: manifests (or a Hugging Face dataset) -> filtered, bucketed batches.

Unusable utterances are dropped before training with one warning per reason (see
`asr.data.manifest.filter_utterances`); audio that fails to load mid-epoch is skipped by the dataset.
The batch sampler's position in the epoch is saved in every checkpoint, so a resumed run sees
exactly the batches an uninterrupted run would have seen.
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
from asr.data.dataset import AudioDataset, collate
from asr.data.hf import HFAudioDataset, HFIterableAudioDataset, load_hf_utterances
from asr.data.manifest import Utterance, filter_utterances, read_manifest
from asr.data.sampler import DurationBucketSampler
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
        d = self.config.data
        source = load_hf_utterances(d.hf_dataset, split, streaming=d.hf_streaming)
        cls = HFIterableAudioDataset if d.hf_streaming else HFAudioDataset
        augment = (
            WaveAugment(self.config.augment, self.config.features.sample_rate) if train else None
        )
        return cls(source, self.tokenizer, wave_augment=augment, seed=self.config.trainer.seed)

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
        if isinstance(dataset, torch.utils.data.IterableDataset):
            batch_size = max(1, int(d.max_batch_seconds // max(d.max_duration, 1.0)))
            return DataLoader(dataset, batch_size=batch_size, **common)
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
        if self.train_sampler is None or self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.train_sampler.epoch, "num_yielded": progress.processed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sampler_state = dict(state) if state else None

"""Random augmentation that depends on (seed, epoch, row) only, not on the process's random state.

Augmentations normally draw from the process-wide random generators, so the crop an image gets
depends on everything drawn before it: the number of dataloader workers, the number of processes,
and - when a run is resumed - on the fact that accelerate's dataloader draws one batch ahead, so a
checkpoint's saved RNG state already includes the next batch's draws. Seeding each sample from its
row index and the epoch makes the augmented batch a pure function of the data order, which the
Trainer already restores exactly; a resumed run then continues bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import random
from contextlib import contextmanager

import numpy as np
import torch
from transformers import TrainerCallback

#: Column holding each row's index, added to training datasets for per-sample seeding.
ROW_INDEX_COLUMN = "__hf_freqkd_row__"


class SeededAugmentation:
    """Holds the seed and the current epoch, from which each sample's draws follow.

    Transforms that take a generator draw from ``generator(row)`` (the crop and flip of
    ``crop`` / ``crop_flip``): a ``torch.Generator`` of the sample's own, nothing global touched.
    Transforms that draw from the process's generators (timm's, torchvision's) run inside
    ``sample_random_state(row)``, or - cheaper for a batch - inside one ``process_random_state_kept()``
    with ``seed_process(row)`` before each sample.

    The epoch is kept in shared memory: DataLoader workers work on a copy of the dataset made when
    they start, and persistent workers (kept from one epoch to the next) must still see the epoch
    the trainer sets in the main process.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(int(value))

    def sample_seed(self, row: int, epoch: int | None = None) -> int:
        # Distinct for every (seed, epoch, row) a run can reach; torch and random take 64-bit seeds.
        epoch = self.epoch if epoch is None else epoch
        return (((self.seed * 1_000_003) + epoch) * 2_147_483_647 + int(row)) % (2**63)

    def generator(self, row: int, epoch: int | None = None) -> torch.Generator:
        """A CPU ``torch.Generator`` seeded for one sample: the stream ``torch.manual_seed(sample_seed(row))`` gives."""
        return torch.Generator().manual_seed(self.sample_seed(row, epoch))

    def generators(self, rows) -> list[torch.Generator]:
        """``generator(row)`` for each row of a batch (the shared epoch read once)."""
        epoch = self.epoch
        return [self.generator(row, epoch) for row in rows]

    def seed_process(self, row: int) -> None:
        """Seed torch's CPU generator, ``random`` and NumPy for one sample (inside ``process_random_state_kept``)."""
        seed = self.sample_seed(row)
        # Not torch.manual_seed: it also queues a seed for every GPU backend, recording a stack trace
        # for each (about 1 ms a call), and leaves the GPU generators changed afterwards.
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (2**32))

    @contextmanager
    def process_random_state_kept(self):
        """Restore torch's CPU generator, ``random`` and NumPy's global state on exit."""
        torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
        try:
            yield
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    @contextmanager
    def sample_random_state(self, row: int):
        """Seed torch (CPU), ``random`` and NumPy for one sample, restoring the process's state afterwards."""
        with self.process_random_state_kept():
            self.seed_process(row)
            yield


def with_row_index(dataset):
    """``dataset`` with a ``ROW_INDEX_COLUMN`` of 0..n-1 (kept if already there)."""
    if ROW_INDEX_COLUMN in dataset.column_names:
        return dataset
    # Named from the parent's fingerprint: datasets would otherwise hash the whole column (0.3 s per 100,000 rows).
    fingerprint = hashlib.sha256(f"{dataset._fingerprint}\n{ROW_INDEX_COLUMN}".encode()).hexdigest()[:16]
    with quiet_datasets():
        # On a subset (max_train_samples) this flattens the selected rows, with a progress bar.
        return dataset.add_column(ROW_INDEX_COLUMN, np.arange(len(dataset), dtype=np.int64), new_fingerprint=fingerprint)


@contextmanager
def quiet_datasets():
    """No ``datasets`` progress bars inside: internal copies are not worth a line on stderr."""
    from datasets.utils import logging as datasets_logging

    was_on = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            datasets_logging.enable_progress_bar()


def dataset_seeding(dataset) -> SeededAugmentation | None:
    """The ``SeededAugmentation`` of a dataset formatted by ``with_image_transform``, if any."""
    transform = (getattr(dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
    # A streamed dataset (hf_freqkd.data.streaming) has no format: it carries its transform itself.
    transform = transform or getattr(dataset, "hf_freqkd_transform", None)
    return getattr(transform, "seeding", None)


class AugmentationEpochCallback(TrainerCallback):
    """Tells the seeded augmentation which epoch the Trainer is starting (also when resuming mid-epoch)."""

    def __init__(self, seeding: SeededAugmentation):
        self.seeding = seeding

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is fractional when resuming mid-epoch (1.33 = a third into epoch 1).
        self.seeding.epoch = math.floor(state.epoch + 1e-9) if state.epoch else 0

"""Seeded augmentation: a training sample's augmentation depends on (seed, epoch, row) only."""

from __future__ import annotations

import copy
import pickle
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.data.seeding import ROW_INDEX_COLUMN, SeededAugmentation, dataset_seeding

INPUT = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


def training_rows(augmentation="crop_flip"):
    data = load_digits_dataset()["train"].select(range(8))
    return with_image_transform(data, "image", "label", INPUT, training=True, augmentation=augmentation)


def test_augmentation_ignores_the_process_random_state_and_changes_with_epoch():
    dataset = training_rows()
    seeding = dataset_seeding(dataset)
    assert seeding is not None and ROW_INDEX_COLUMN in dataset.column_names
    first = torch.stack([dataset[i]["pixel_values"] for i in range(8)])
    torch.manual_seed(123), random.seed(123), torch.rand(1000)  # unrelated draws in between
    again = torch.stack([dataset[i]["pixel_values"] for i in range(8)])
    assert torch.equal(first, again)
    batch = torch.stack(dataset[2:6]["pixel_values"])  # batched access: same per-row result
    assert torch.equal(batch, first[2:6])

    seeding.epoch = 1
    next_epoch = torch.stack([dataset[i]["pixel_values"] for i in range(8)])
    assert not torch.equal(first, next_epoch)
    seeding.epoch, seeding.seed = 0, 1
    assert not torch.equal(first, torch.stack([dataset[i]["pixel_values"] for i in range(8)]))


def test_the_process_random_state_is_left_as_it_was():
    dataset = training_rows()
    torch.manual_seed(7), random.seed(7)
    expected_torch, expected_python = torch.rand(3), random.random()
    torch.manual_seed(7), random.seed(7)
    dataset[0]
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_python


def test_evaluation_and_unaugmented_data_get_no_row_column():
    data = load_digits_dataset()["test"].select(range(4))
    evaluation = with_image_transform(data, "image", "label", INPUT, training=False, augmentation="none")
    assert dataset_seeding(evaluation) is None and ROW_INDEX_COLUMN not in evaluation.column_names
    assert dataset_seeding(training_rows("none")) is None


def test_a_sample_generator_gives_the_stream_of_the_global_seeding():
    # The batched crop/flip draws from generator(row); the release before it from torch.manual_seed.
    seeding = SeededAugmentation(seed=3)
    seeding.epoch = 2
    torch.manual_seed(seeding.sample_seed(5))
    expected = torch.randint(0, 9, (4,)), torch.rand(3)
    generator = seeding.generator(5)
    assert torch.equal(torch.randint(0, 9, (4,), generator=generator), expected[0])
    assert torch.equal(torch.rand(3, generator=generator), expected[1])
    assert seeding.generators([5])[0].initial_seed() == seeding.sample_seed(5) != seeding.sample_seed(5, epoch=3)


@pytest.mark.parametrize("augmentation", ["crop_flip", "timm"])
def test_the_process_random_state_is_left_as_it_was_by_each_path(augmentation):
    dataset = training_rows(augmentation)
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    dataset[0:4]
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]


def test_timm_augmentation_is_seeded_per_sample_without_seeding_the_gpus(monkeypatch):
    # torch.manual_seed would also seed every GPU backend: slow, and it changes the GPUs' streams.
    def fail(*args, **kwargs):
        raise AssertionError("a GPU generator was seeded")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", fail)
    dataset = training_rows("timm")
    first = torch.stack(dataset[0:8]["pixel_values"])
    torch.rand(100), random.random()
    assert torch.equal(torch.stack([dataset[i]["pixel_values"] for i in range(8)]), first)
    dataset_seeding(dataset).epoch = 1
    assert not torch.equal(torch.stack(dataset[0:8]["pixel_values"]), first)


def test_persistent_dataloader_workers_see_the_epoch_the_trainer_sets():
    # A persistent worker keeps the copy of the dataset it started with; the epoch must still reach it.
    dataset = training_rows()
    seeding = dataset_seeding(dataset)
    in_process = {}
    for epoch in (0, 1):
        seeding.epoch = epoch
        in_process[epoch] = torch.stack(dataset[0:8]["pixel_values"])
    assert not torch.equal(in_process[0], in_process[1])
    seeding.epoch = 0
    loader = DataLoader(
        dataset, batch_size=8, num_workers=1, persistent_workers=True, collate_fn=lambda rows: torch.stack([r["pixel_values"] for r in rows])
    )
    for epoch in (0, 1, 0):
        seeding.epoch = epoch  # as AugmentationEpochCallback does before each epoch's iterator
        (batch,) = list(loader)
        assert torch.equal(batch, in_process[epoch])


def test_the_epoch_survives_pickling_and_copying():
    seeding = SeededAugmentation(seed=4)
    seeding.epoch = 6
    assert pickle.loads(pickle.dumps(seeding)).epoch == 6
    copied = copy.deepcopy(seeding)
    assert (copied.seed, copied.epoch) == (4, 6)

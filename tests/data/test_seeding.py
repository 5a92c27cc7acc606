"""Seeded augmentation: a training sample's augmentation depends on (seed, epoch, row) only."""

from __future__ import annotations

import random

import torch

from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.data.seeding import ROW_INDEX_COLUMN, dataset_seeding

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

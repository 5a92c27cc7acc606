"""Segmentation data: mask columns, class ids, the ignore index and paired image / mask transforms."""

from __future__ import annotations

import itertools

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_freqkd.data.segmentation import (
    IGNORE_LABEL,
    check_mask_labels_in_range,
    count_mask_classes,
    detect_mask_columns,
    encode_labels,
    with_segmentation_transform,
)
from hf_freqkd.data.shapes_segmentation import load_shapes_segmentation

CONFIG = {"input_size": (3, 24, 24), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear"}


def mask_dataset(masks, names=("image", "annotation"), mode="L"):
    images = [Image.new("RGB", mask.shape[1::-1]) for mask in masks]
    features = datasets.Features({names[0]: datasets.Image(), names[1]: datasets.Image()})
    return datasets.Dataset.from_dict({names[0]: images, names[1]: [Image.fromarray(m.astype(np.uint8), mode=mode) for m in masks]}, features=features)


def test_detect_mask_columns_by_name_then_by_type():
    assert detect_mask_columns(load_shapes_segmentation(num_train=2, num_test=1, image_size=16)["train"]) == ("image", "annotation")
    assert detect_mask_columns(mask_dataset([np.zeros((4, 4))], names=("photo", "gt_map"))) == ("photo", "gt_map")
    assert detect_mask_columns(mask_dataset([np.zeros((4, 4))], names=("img", "mask"))) == ("img", "mask")


def test_detect_mask_columns_names_what_is_missing():
    only_images = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))]}, features=datasets.Features({"image": datasets.Image()}))
    with pytest.raises(ValueError, match="no mask column found; the dataset's columns are: image. Set mask_column"):
        detect_mask_columns(only_images)
    with pytest.raises(ValueError, match="mask column 'seg' is not in the dataset; its columns are: image, annotation"):
        detect_mask_columns(mask_dataset([np.zeros((4, 4))]), mask_column="seg")


def test_encode_labels_maps_ignored_pixels_to_minus_100():
    raw = np.array([[0, 1, 2, 255]])
    np.testing.assert_array_equal(encode_labels(raw, 255, reduce_labels=False), [[0, 1, 2, IGNORE_LABEL]])
    # ADE20k: 0 is "other" (ignored), the classes 1..150 become 0..149.
    np.testing.assert_array_equal(encode_labels(raw, 255, reduce_labels=True), [[IGNORE_LABEL, 0, 1, IGNORE_LABEL]])


def test_count_and_check_classes_from_the_masks():
    data = mask_dataset([np.array([[0, 1], [2, 255]]), np.array([[3, 0], [0, 0]])])
    assert count_mask_classes(data, "annotation") == 4
    assert count_mask_classes(data, "annotation", reduce_labels=True) == 3
    check_mask_labels_in_range(data, "annotation", 4, "train")  # 255 is the ignore index, not a class


def test_a_label_outside_the_classes_is_named_before_training():
    data = mask_dataset([np.array([[0, 1], [7, 255]])])
    with pytest.raises(ValueError, match=r"train split: mask column 'annotation' holds values \[7\] that are neither class ids of the model's 4 classes \(0..3\) nor the ignore_index 255"):
        check_mask_labels_in_range(data, "annotation", 4, "train")
    # With another ignore index, 255 becomes an out-of-range value too.
    with pytest.raises(ValueError, match=r"holds values \[7, 255\]"):
        check_mask_labels_in_range(data, "annotation", 4, "train", ignore_index=254)


def test_colour_masks_are_refused_with_the_mode():
    data = mask_dataset([np.zeros((4, 4, 3))], mode="RGB")
    with pytest.raises(ValueError, match="mask column 'annotation' holds RGB images: expected single-channel class-id masks"):
        count_mask_classes(data, "annotation")


def test_evaluation_transform_resizes_image_and_mask_to_the_input_size():
    data = load_shapes_segmentation(num_train=2, num_test=1, image_size=32, seed=0)["train"]
    row = with_segmentation_transform(data, "image", "annotation", CONFIG, training=False, augmentation="none")[0]
    assert row["pixel_values"].shape == (3, 24, 24) and row["pixel_values"].dtype == torch.float32
    assert row["labels"].shape == (24, 24) and row["labels"].dtype == torch.int64
    assert set(row["labels"].unique().tolist()) <= {IGNORE_LABEL, 0, 1, 2, 3}


@pytest.mark.parametrize("augmentation", ["crop_flip", "timm"])
def test_training_augmentation_moves_image_and_mask_together(augmentation):
    # The image's red channel spells the mask (class * 60): after any crop / flip / resize, each
    # labelled pixel must still sit under its own colour; padding is ignored in the mask, black in the image.
    rng = np.random.default_rng(0)
    classes = np.kron(rng.integers(0, 4, (3, 3)), np.ones((8, 8), dtype=np.int64))
    image = np.zeros((24, 24, 3), dtype=np.uint8)
    image[..., 0] = classes * 60
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    data = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image)] * 8, "annotation": [Image.fromarray(classes.astype(np.uint8), mode="L")] * 8}, features=features
    )
    rows = with_segmentation_transform(data, "image", "annotation", CONFIG, training=True, augmentation=augmentation)
    torch.manual_seed(0)
    changed, checked = False, 0
    for index in range(8):
        row = rows[index]
        labels, red = row["labels"], row["pixel_values"][0] * 255
        labelled = labels != IGNORE_LABEL
        changed |= not torch.equal(labels, torch.as_tensor(classes))
        # Away from class edges only: bilinear image resampling blurs them, and torch's nearest
        # resampling of the mask samples up to half a source pixel off the bilinear grid
        # (one output pixel at the 2x zoom of a 25 % area crop).
        interior = labelled.clone()
        for shift in itertools.product(range(-2, 3), repeat=2):
            interior &= torch.roll(labels, shift, dims=(0, 1)) == labels
        assert torch.allclose(red[interior], labels[interior].float() * 60, atol=2)
        checked += int(interior.sum())
        assert (red[~labelled] < 1).all() if augmentation == "crop_flip" else True
    assert changed and checked > 200

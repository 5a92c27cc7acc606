"""The generated shapes segmentation set: seeded, sized as asked, masks in the class range."""

from __future__ import annotations

import numpy as np
import pytest

from hf_freqkd.data.loading import load_image_dataset
from hf_freqkd.data.shapes_segmentation import (
    SHAPES_IGNORE_INDEX,
    load_shapes_segmentation,
    parse_shapes_config,
)


def arrays(split, column):
    return np.stack([np.asarray(row[column]) for row in split])


def test_same_seed_same_images_and_masks_other_seed_others():
    first = load_shapes_segmentation(num_train=6, num_test=3, image_size=24, seed=3)
    again = load_shapes_segmentation(num_train=6, num_test=3, image_size=24, seed=3)
    other = load_shapes_segmentation(num_train=6, num_test=3, image_size=24, seed=4)
    for split in ("train", "test"):
        for column in ("image", "annotation"):
            np.testing.assert_array_equal(arrays(first[split], column), arrays(again[split], column))
    assert not np.array_equal(arrays(first["train"], "image"), arrays(other["train"], "image"))
    # The splits are independent streams, not the same images twice.
    assert not np.array_equal(arrays(first["train"], "image")[:3], arrays(first["test"], "image"))


@pytest.mark.parametrize("num_classes", [2, 4, 6])
def test_sizes_and_mask_values_are_as_asked(num_classes):
    data = load_shapes_segmentation(num_train=40, num_test=5, image_size=32, num_classes=num_classes, seed=0)
    assert (len(data["train"]), len(data["test"])) == (40, 5)
    images, masks = arrays(data["train"], "image"), arrays(data["train"], "annotation")
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert masks.shape == (40, 32, 32)
    assert data["train"][0]["annotation"].mode == "L"
    # Every class occurs somewhere, nothing outside the classes but the ignored outlines.
    assert set(np.unique(masks).tolist()) == set(range(num_classes)) | {SHAPES_IGNORE_INDEX}


def test_outlines_are_ignored_only_when_asked():
    with_border = arrays(load_shapes_segmentation(num_train=8, num_test=1, image_size=24, seed=1)["train"], "annotation")
    without = arrays(load_shapes_segmentation(num_train=8, num_test=1, image_size=24, seed=1, ignore_border=False)["train"], "annotation")
    assert SHAPES_IGNORE_INDEX not in without
    ignored = with_border == SHAPES_IGNORE_INDEX
    # The outline pixels belong to shapes, never to the background, and the rest is unchanged.
    assert ignored.any() and (without[ignored] > 0).all()
    np.testing.assert_array_equal(with_border[~ignored], without[~ignored])


def test_textures_make_shapes_more_than_flat_colour():
    image = arrays(load_shapes_segmentation(num_train=1, num_test=1, image_size=48, seed=0)["train"], "image")[0].astype(float)
    # Stripes / checkerboards: neighbouring pixels differ well beyond the noise.
    assert np.abs(np.diff(image, axis=1)).mean() > 10


def test_dataset_name_and_config_string_resolve():
    data = load_image_dataset("shapes_segmentation", "num_train=4,num_test=2,image_size=16,num_classes=3,ignore_border=0")
    assert (len(data["train"]), len(data["test"])) == (4, 2)
    assert np.asarray(data["train"][0]["annotation"]).shape == (16, 16)
    assert parse_shapes_config(None) == {}
    assert parse_shapes_config("seed=2, max_shapes=1") == {"seed": 2, "max_shapes": 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 7}, "num_classes = 7 is invalid: expected an integer in 2..6"),
        ({"image_size": 8}, "image_size = 8 is invalid: expected an integer >= 16"),
        ({"num_train": 0}, "num_train = 0 is invalid"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_shapes_segmentation(**kwargs)


def test_bad_config_string_is_named():
    with pytest.raises(ValueError, match="'colours=3' is invalid: expected key=value with key one of num_train"):
        parse_shapes_config("colours=3")
    with pytest.raises(ValueError, match="num_train = 'many' is invalid: expected an integer"):
        parse_shapes_config("num_train=many")

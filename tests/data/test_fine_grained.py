"""The generated fine-grained image set."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from hf_freqkd.data.fine_grained import (
    CLASSES_PER_GROUP,
    FINE_GRAINED_NAME,
    class_attributes,
    load_fine_grained_dataset,
    parse_fine_grained_config,
    render,
)
from hf_freqkd.data.loading import load_image_dataset

SMALL = {"classes": 12, "train_per_class": 3, "test_per_class": 2, "image_size": 16, "seed": 3}


def pixels(split) -> np.ndarray:
    return np.stack([np.asarray(image) for image in split["image"]])


def test_makes_the_classes_and_images_asked():
    data = load_fine_grained_dataset(**SMALL)
    assert set(data) == {"train", "test"}
    assert (data["train"].num_rows, data["test"].num_rows) == (36, 24)
    feature = data["train"].features["label"]
    assert isinstance(feature, datasets.ClassLabel) and feature.num_classes == 12
    assert sorted(data["train"]["label"]) == [c for c in range(12) for _ in range(3)]
    assert sorted(data["test"]["label"]) == [c for c in range(12) for _ in range(2)]
    assert data["train"]["label"][:12] != sorted(data["train"]["label"][:12])  # shuffled rows
    image = data["train"][0]["image"]
    assert image.size == (16, 16) and image.mode == "RGB"


def test_deterministic_for_a_seed_and_different_across_seeds():
    first = pixels(load_fine_grained_dataset(**SMALL)["train"])
    # Bypass the in-memory cache: the renderer itself must be deterministic.
    rng = np.random.default_rng([3, 0])
    again = np.stack([render(label, 16, rng) for label in range(12) for _ in range(3)])[rng.permutation(36)]
    np.testing.assert_array_equal(first, again)
    other = pixels(load_fine_grained_dataset(**{**SMALL, "seed": 4})["train"])
    assert not np.array_equal(first, other)


def test_classes_in_a_group_share_the_coarse_look_and_differ_in_one_detail():
    base = class_attributes(0)
    for label in range(1, CLASSES_PER_GROUP):
        attributes = class_attributes(label)
        assert (attributes["shape"], attributes["hue"]) == (base["shape"], base["hue"])
    changed = [k for k in ("spot", "orientation", "frequency") if class_attributes(1)[k] != base[k]]
    assert changed == ["spot"]
    assert class_attributes(CLASSES_PER_GROUP)["shape"] != base["shape"]


def test_loads_by_name_with_size_in_the_config_name():
    data = load_image_dataset(FINE_GRAINED_NAME, "classes=10,train_per_class=2,test_per_class=1,image_size=12")
    assert (data["train"].num_rows, data["test"].num_rows) == (20, 10)
    assert data["train"].features["label"].num_classes == 10


@pytest.mark.parametrize(
    "text, message",
    [("classes=1", "classes = 1 is invalid"), ("colors=3", "colors=3"), ("image_size=big", "image_size = 'big'")],
)
def test_bad_config_names_fail_naming_the_value(text, message):
    with pytest.raises(ValueError, match=message):
        parse_fine_grained_config(text)

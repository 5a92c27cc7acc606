"""The bundled offline digits dataset."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from hf_freqkd.data import load_digits_dataset


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def test_split_sizes(digits):
    assert set(digits) == {"train", "test"}
    assert digits["train"].num_rows == 1347
    assert digits["test"].num_rows == 450


def test_ten_classes_in_both_splits(digits):
    feature = digits["train"].features["label"]
    assert isinstance(feature, datasets.ClassLabel)
    assert feature.num_classes == 10
    assert feature.names == [str(d) for d in range(10)]
    assert sorted(digits["train"].unique("label")) == list(range(10))
    assert sorted(digits["test"].unique("label")) == list(range(10))


def test_split_is_stratified(digits):
    train_counts = np.bincount(list(digits["train"]["label"]), minlength=10)
    test_counts = np.bincount(list(digits["test"]["label"]), minlength=10)
    fraction = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(fraction - 0.25) < 0.02)


def test_images_are_8x8_grayscale(digits):
    for split in ("train", "test"):
        image = digits[split][0]["image"]
        assert image.mode == "L"
        assert image.size == (8, 8)


def test_images_are_the_scaled_sklearn_scans(digits):
    from sklearn.datasets import load_digits

    reference = load_digits()
    expected = np.round(reference.images * (255.0 / 16.0)).astype(np.uint8)
    ours = [np.asarray(row["image"]) for split in ("train", "test") for row in digits[split]]
    ours_labels = list(digits["train"]["label"]) + list(digits["test"]["label"])
    # Same multiset of (image, label) pairs: nothing lost, duplicated or mis-scaled.
    key = lambda pixels, label: (int(label), pixels.tobytes())  # noqa: E731
    assert sorted(map(key, ours, ours_labels)) == sorted(map(key, expected, reference.target))
    assert max(int(pixels.max()) for pixels in ours) == 255


def test_split_is_deterministic(digits):
    again = load_digits_dataset()
    for split in ("train", "test"):
        assert list(again[split]["label"]) == list(digits[split]["label"])
    assert np.array_equal(np.asarray(again["test"][7]["image"]), np.asarray(digits["test"][7]["image"]))


def test_upscale_repeats_pixels(digits):
    big = load_digits_dataset(upscale=2)
    small_pixels = np.asarray(digits["train"][3]["image"])
    big_image = big["train"][3]["image"]
    assert big_image.size == (16, 16)
    assert np.array_equal(np.asarray(big_image), small_pixels.repeat(2, axis=0).repeat(2, axis=1))

"""Dataset loading (image folder, parquet), column detection, label checks and image transforms."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_freqkd.data import (
    build_image_transform,
    check_labels_in_range,
    count_classes,
    detect_columns,
    load_digits_dataset,
    load_image_dataset,
    pick_split,
    with_image_transform,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def tiny_images(count: int, size=(6, 5)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(count)]


# ----------------------------------------------------------------------------------------------
# Column detection


def test_detect_columns_on_digits(digits):
    assert detect_columns(digits["train"]) == ("image", "label")


def test_detect_columns_by_feature_type_before_name():
    features = datasets.Features(
        {
            "label": datasets.Value("string"),  # a caption under a misleading name
            "photo": datasets.Image(),
            "kind": datasets.ClassLabel(names=["a", "b"]),
        }
    )
    data = datasets.Dataset.from_dict({"label": ["x", "y"], "photo": tiny_images(2), "kind": [0, 1]}, features=features)
    assert detect_columns(data) == ("photo", "kind")


def test_detect_columns_by_name_fallback():
    data = datasets.Dataset.from_dict({"id": [1, 2], "img": ["a.png", "b.png"], "target": [0, 1]})
    assert detect_columns(data) == ("img", "target")


def test_explicit_columns_are_used():
    data = datasets.Dataset.from_dict({"img": ["a.png"], "target": [0], "other": [3]})
    assert detect_columns(data, label_column="other") == ("img", "other")


def test_no_label_column_lists_the_columns():
    data = datasets.Dataset.from_dict(
        {"image": tiny_images(2), "caption": ["a", "b"]}, features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    )
    with pytest.raises(ValueError, match=r"no label column found; the dataset's columns are: image, caption"):
        detect_columns(data)


def test_no_image_column_lists_the_columns():
    data = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    with pytest.raises(ValueError, match=r"no image column found; the dataset's columns are: text, label"):
        detect_columns(data)


def test_image_column_override_that_does_not_exist(digits):
    with pytest.raises(ValueError, match=r"image column 'pixels' is not in the dataset; its columns are: image, label"):
        detect_columns(digits["train"], image_column="pixels")


def test_label_column_override_that_does_not_exist(digits):
    with pytest.raises(ValueError, match=r"label column 'fine_label' is not in the dataset"):
        detect_columns(digits["train"], label_column="fine_label")


# ----------------------------------------------------------------------------------------------
# Loading


def test_imagefolder_loading(tmp_path):
    root = tmp_path / "pets"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            tiny_images(1, size=(7 + i, 9))[0].save(root / name / f"{name}_{i}.png")
    loaded = load_image_dataset(str(root))
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert train.num_rows == 6
    image_column, label_column = detect_columns(train)
    assert (image_column, label_column) == ("image", "label")
    assert train.features["label"].names == ["cat", "dog"]
    assert count_classes(train, "label") == 2
    assert sorted(train["label"]) == [0, 0, 0, 1, 1, 1]
    assert {train[i]["image"].size for i in range(6)} == {(9, 7), (9, 8), (9, 9)}


def make_parquet(path, labels):
    features = datasets.Features({"img": datasets.Image(), "target": datasets.Value("int64")})
    datasets.Dataset.from_dict({"img": tiny_images(len(labels)), "target": labels}, features=features).to_parquet(str(path))


def test_parquet_file_loading(tmp_path):
    make_parquet(tmp_path / "data.parquet", [0, 2, 1, 2])
    train = load_image_dataset(str(tmp_path / "data.parquet"))["train"]
    assert train.num_rows == 4
    assert detect_columns(train) == ("img", "target")
    assert list(train["target"]) == [0, 2, 1, 2]
    assert count_classes(train, "target") == 3
    assert train[0]["img"].size == (5, 6)


def test_parquet_folder_loading(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    make_parquet(folder / "a.parquet", [0, 1])
    make_parquet(folder / "b.parquet", [3])
    train = load_image_dataset(str(folder))["train"]
    assert sorted(train["target"]) == [0, 1, 3]
    assert count_classes(train, "target") == 4


def test_file_that_is_not_parquet_is_rejected(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a .parquet file"):
        load_image_dataset(str(path))


def test_negative_labels_are_rejected_by_count_classes():
    data = datasets.Dataset.from_dict({"img": ["a"] * 3, "target": [0, -1, 2]})
    with pytest.raises(ValueError, match=r"label column 'target' holds \[-1\]"):
        count_classes(data, "target")


def test_labels_outside_the_model_classes(digits):
    with pytest.raises(ValueError) as error:
        check_labels_in_range(digits["test"], "label", 5, "test")
    message = str(error.value)
    assert "labels [5, 6, 7, 8, 9]" in message
    assert "5 classes (0..4)" in message
    assert message.startswith("test split")


def test_labels_inside_the_model_classes(digits):
    check_labels_in_range(digits["test"], "label", 10, "test")


def test_pick_split():
    assert pick_split(["train", "test"], None, "eval", ("validation", "test")) == "test"
    assert pick_split(["train"], None, "eval", ("validation", "test")) is None
    assert pick_split(["train", "valid"], "valid", "eval", ("validation",)) == "valid"
    with pytest.raises(ValueError, match="eval split 'dev' does not exist; the dataset has splits: train, test"):
        pick_split(["train", "test"], "dev", "eval", ("validation",))


# ----------------------------------------------------------------------------------------------
# Transforms


def fake_input_config(channels: int) -> dict:
    return {
        "input_size": (channels, 32, 32),
        "mean": (0.5,) * channels,
        "std": (0.25,) * channels,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("training, augmentation", [(False, "none"), (True, "crop"), (True, "crop_flip"), (True, "timm")])
def test_transform_gives_model_input_size(digits, channels, training, augmentation):
    rows = digits["test"].select(range(4))
    formatted = with_image_transform(rows, "image", "label", fake_input_config(channels), training, augmentation)
    batch = formatted[:4]
    assert set(batch) == {"pixel_values", "labels"}
    assert list(batch["labels"]) == list(rows["label"])
    for pixels in batch["pixel_values"]:
        assert isinstance(pixels, torch.Tensor)
        assert pixels.dtype == torch.float32
        assert pixels.shape == (channels, 32, 32)


@pytest.mark.parametrize("channels", [3, 1])
def test_eval_transform_normalizes(digits, channels):
    row = digits["test"][0]
    formatted = with_image_transform(
        digits["test"].select([0]), "image", "label", fake_input_config(channels), training=False, augmentation="none"
    )
    pixels = formatted[0]["pixel_values"]
    # Digit scans have a blank (0) border: (0 - 0.5) / 0.25 = -2; the brightest ink 255 -> +2.
    assert np.asarray(row["image"])[0, 0] == 0
    assert torch.allclose(pixels[:, 0, 0], torch.full((channels,), -2.0))
    assert pixels.max().item() <= 2.0 + 1e-6
    assert pixels.max().item() > 1.0
    if channels == 3:
        # A grayscale image converted to RGB has three identical channels.
        assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])


def test_unknown_augmentation_is_rejected():
    with pytest.raises(ValueError, match="augmentation 'mixup' is unknown; expected one of crop_flip, crop, timm, none"):
        build_image_transform(fake_input_config(3), training=True, augmentation="mixup")

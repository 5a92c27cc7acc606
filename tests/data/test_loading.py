"""Dataset loading (image folder, parquet, Hub layouts, missing paths), subsets, column detection, label checks, transforms."""

from __future__ import annotations

import os
import socket
import time

import datasets
import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional

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
from hf_freqkd.data.loading import SeededCropFlip, seeded_subset
from hf_freqkd.data.seeding import dataset_seeding
from hf_freqkd.errors import DataError, MissingPathError
from hf_freqkd.sources import _probe_hub


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


def test_folder_in_the_hub_parquet_layout_keeps_its_splits(tmp_path):
    # As a Hub dataset downloaded for offline use: <split>-00000-of-00001.parquet next to a README.md.
    folder = tmp_path / "cifar_like"
    folder.mkdir()
    make_parquet(folder / "train-00000-of-00001.parquet", [0, 1, 2, 1])
    make_parquet(folder / "test-00000-of-00001.parquet", [2, 0])
    (folder / "README.md").write_text("# A dataset\nDownloaded from the Hub.\n")
    loaded = load_image_dataset(str(folder))
    assert sorted(loaded) == ["test", "train"]
    assert list(loaded["train"]["target"]) == [0, 1, 2, 1]
    assert list(loaded["test"]["target"]) == [2, 0]
    assert pick_split(list(loaded), None, "eval", ("validation", "test")) == "test"


def test_folder_in_the_hub_data_folder_layout_keeps_its_splits(tmp_path):
    folder = tmp_path / "downloaded"
    (folder / "data").mkdir(parents=True)
    make_parquet(folder / "data" / "train-00000-of-00002.parquet", [0, 1])
    make_parquet(folder / "data" / "train-00001-of-00002.parquet", [2])
    make_parquet(folder / "data" / "validation-00000-of-00001.parquet", [1])
    loaded = load_image_dataset(str(folder))
    assert {name: split.num_rows for name, split in loaded.items()} == {"train": 3, "validation": 1}


def test_imagefolder_with_split_folders(tmp_path):
    root = tmp_path / "pets"
    for split, count in (("train", 3), ("test", 1)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                tiny_images(1)[0].save(root / split / name / f"{i}.png")
    loaded = load_image_dataset(str(root))
    assert {name: split.num_rows for name, split in loaded.items()} == {"train": 6, "test": 2}
    assert loaded["test"].features["label"].names == ["cat", "dog"]


def test_file_that_is_not_parquet_is_rejected(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a .parquet file"):
        load_image_dataset(str(path))


# ----------------------------------------------------------------------------------------------
# Missing local paths and Hub ids: told apart before any download


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as the working directory, holding data/my_images."""
    (tmp_path / "data" / "my_images").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_hub_download(monkeypatch):
    """Fails the test if datasets is asked to load anything but a local packaged builder."""
    load_dataset = datasets.load_dataset

    def local_only(path, *args, **kwargs):
        if path not in ("parquet", "imagefolder") and not os.path.isdir(path):
            pytest.fail(f"'{path}' was sent to the Hub")
        return load_dataset(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", local_only)


@pytest.mark.parametrize(
    "name, near",
    [("data/my_imgs", "data/my_images"), ("data/my_images/train.parquet", None), ("data/train.parquet", None), ("digit", "digits")],
)
def test_missing_local_dataset_is_not_taken_for_a_hub_id(project, no_hub_download, name, near):
    start = time.perf_counter()
    with pytest.raises(MissingPathError) as error:
        load_image_dataset(name)
    assert time.perf_counter() - start < 2
    message = str(error.value)
    assert message.startswith(f"dataset '{name}' does not exist (no ")
    assert "image folder" in message and "digits" in message
    assert (f"Did you mean '{near}'?" in message) == (near is not None)


def test_hub_dataset_id_while_offline_is_one_fast_line(project, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(DataError) as error:
        load_image_dataset("some-org/not-cached-images")
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert message.startswith(f"dataset 'some-org/not-cached-images' is not a local path (nothing of that name in {project})")
    assert "not in the Hugging Face cache while HF_HUB_OFFLINE=1" in message
    assert "give a local image folder" in message and "\n" not in message


def test_hub_dataset_id_without_network_is_not_retried(project, monkeypatch, no_hub_download):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    _probe_hub.cache_clear()
    try:
        start = time.perf_counter()
        with pytest.raises(DataError, match="cannot be reached .*set HF_HUB_OFFLINE=1"):
            load_image_dataset("some-org/images")
        assert time.perf_counter() - start < 5
    finally:
        _probe_hub.cache_clear()


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


# ----------------------------------------------------------------------------------------------
# max_train_samples / max_eval_samples


def sorted_by_class(per_class: list[int], class_label: bool = True) -> datasets.Dataset:
    """Rows sorted by class, as an image folder lists them."""
    labels = [label for label, count in enumerate(per_class) for _ in range(count)]
    feature = datasets.ClassLabel(num_classes=len(per_class)) if class_label else datasets.Value("int64")
    return datasets.Dataset.from_dict(
        {"row": list(range(len(labels))), "label": labels}, features=datasets.Features({"row": datasets.Value("int64"), "label": feature})
    )


def test_subset_of_a_class_sorted_dataset_is_stratified():
    data = sorted_by_class([10, 10, 10, 10])
    subset = seeded_subset(data, 8, seed=0, label_column="label")
    assert sorted(subset["label"]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert subset["row"] != list(range(8))
    assert seeded_subset(data, 8, seed=0, label_column="label")["row"] == subset["row"]
    assert seeded_subset(data, 8, seed=1, label_column="label")["row"] != subset["row"]


def test_subset_without_class_labels_is_a_seeded_shuffle():
    data = sorted_by_class([10, 10, 10], class_label=False)
    subset = seeded_subset(data, 9, seed=3, label_column="label")
    assert subset.num_rows == 9 and len(set(subset["row"])) == 9
    assert subset["row"] == data.shuffle(seed=3)["row"][:9]
    assert len(set(subset["label"])) > 1  # the first nine rows would all be class 0


def test_subset_with_a_class_too_rare_to_stratify():
    data = sorted_by_class([6, 6, 1])
    subset = seeded_subset(data, 5, seed=0, label_column="label")
    assert subset["row"] == data.shuffle(seed=0)["row"][:5]


@pytest.mark.parametrize("cap", [None, 0, 12, 50])
def test_no_subset_without_a_smaller_cap(cap):
    data = sorted_by_class([6, 6])
    assert seeded_subset(data, cap, seed=0, label_column="label") is data


def test_run_caps_an_image_folder_with_every_class(tmp_path):
    # Three classes in imagefolder layout: the first 6 rows would be cats and dogs only.
    from hf_freqkd.config import parse_config
    from hf_freqkd.run import load_run_data

    for split, count in (("train", 6), ("test", 4)):
        for name in ("cat", "dog", "eel"):
            (tmp_path / "pets" / split / name).mkdir(parents=True)
            for i in range(count):
                tiny_images(1)[0].save(tmp_path / "pets" / split / name / f"{i}.png")
    args, model_args, data_args = parse_config(
        None,
        [f"dataset={tmp_path / 'pets'}", "student_model=resnet8", f"output_dir={tmp_path / 'run'}", "max_train_samples=6", "max_eval_samples=3"],
    )
    data = load_run_data(args, model_args, data_args)
    assert sorted(data.train["label"]) == [0, 0, 1, 1, 2, 2]
    assert sorted(data.eval["label"]) == [0, 1, 2]


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


# ----------------------------------------------------------------------------------------------
# The batched crop / crop_flip transform against the torchvision pipeline it replaces


def reference_views(images, input_config, augmentation, seeds) -> torch.Tensor:
    """build_image_transform's torchvision pipeline, torch's global generator seeded per image (the previous release)."""
    reference = build_image_transform(input_config, training=True, augmentation=augmentation)
    views = []
    for image, seed in zip(images, seeds):
        torch.manual_seed(seed)
        views.append(reference(image))
    return torch.stack(views)


@pytest.mark.parametrize("augmentation", ["crop", "crop_flip"])
@pytest.mark.parametrize("channels, stored_size", [(3, 32), (1, 32), (3, 20)])  # 20 px: resized to 32 first
def test_batched_crop_flip_equals_torchvision_exactly(augmentation, channels, stored_size):
    rows = datasets.Dataset.from_dict(
        {"image": tiny_images(16, size=(stored_size, stored_size)), "label": [0] * 16},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    input_config = fake_input_config(channels)
    formatted = with_image_transform(rows, "image", "label", input_config, training=True, augmentation=augmentation)
    seeding = dataset_seeding(formatted)
    seeding.seed, seeding.epoch = 3, 2
    got = torch.stack(formatted[:16]["pixel_values"])
    images = [image.convert("L" if channels == 1 else "RGB") for image in rows["image"]]
    expected = reference_views(images, input_config, augmentation, [seeding.sample_seed(row) for row in range(16)])
    assert got.dtype == torch.float32 and got.shape == (16, channels, 32, 32)
    assert torch.equal(got, expected)
    # The comparison covered crops at several offsets and, for crop_flip, flipped and unflipped images.
    draws = [SeededCropFlip(input_config, flip=augmentation == "crop_flip").draw(g) for g in seeding.generators(range(16))]
    assert len({(top, left) for top, left, _ in draws}) > 4
    assert {flipped for _, _, flipped in draws} == ({False, True} if augmentation == "crop_flip" else {False})


def test_crop_flip_of_given_draws_is_torchvision_pad_crop_flip_to_tensor_normalize():
    image = tiny_images(1, size=(32, 32))[0]
    input_config = fake_input_config(3)
    transform = SeededCropFlip(input_config, flip=True)
    for top, left, flipped in [(0, 0, False), (8, 8, True), (3, 6, True), (8, 0, False)]:
        transform.draw = lambda generator, drawn=(top, left, flipped): drawn
        (got,) = transform([image], [None])
        expected = functional.crop(functional.pad(image, 4), top, left, 32, 32)
        expected = functional.hflip(expected) if flipped else expected
        expected = functional.normalize(functional.to_tensor(expected), input_config["mean"], input_config["std"])
        assert torch.equal(got, expected), (top, left, flipped)


def test_crop_flip_without_row_indices_draws_from_the_global_generator_as_torchvision_does():
    rows = datasets.Dataset.from_dict({"image": tiny_images(6, size=(32, 32)), "label": [1] * 6})
    input_config = fake_input_config(3)
    formatted = with_image_transform(rows, "image", "label", input_config, training=True, augmentation="crop_flip")
    transform = formatted.format["format_kwargs"]["transform"]
    torch.manual_seed(11)
    got = torch.stack(transform({"image": rows["image"], "label": rows["label"]})["pixel_values"])
    torch.manual_seed(11)
    reference = build_image_transform(input_config, training=True, augmentation="crop_flip")
    assert torch.equal(got, torch.stack([reference(image) for image in rows["image"]]))


def test_crop_flip_batch_of_mixed_sizes_and_modes():
    # An image folder: every size and mode in one batch, each resized and converted on its own.
    rng = np.random.default_rng(1)
    images = [
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (40, 24, 4), dtype=np.uint8)),  # RGBA
        Image.fromarray(rng.integers(0, 256, (9, 13), dtype=np.uint8)),  # L
    ]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2]}, features=features)
    input_config = fake_input_config(3)
    formatted = with_image_transform(rows, "image", "label", input_config, training=True, augmentation="crop_flip")
    seeding = dataset_seeding(formatted)
    got = torch.stack(formatted[:3]["pixel_values"])
    seeds = [seeding.sample_seed(row) for row in range(3)]
    expected = reference_views([image.convert("RGB") for image in rows["image"]], input_config, "crop_flip", seeds)
    assert torch.equal(got, expected)


def test_the_benchmark_reference_keeps_the_torchvision_transform():
    # SeededCropFlip runs the batch; the per-image torchvision pipeline stays on the transform for reference.
    rows = datasets.Dataset.from_dict({"image": tiny_images(2, size=(32, 32)), "label": [0, 1]})
    formatted = with_image_transform(rows, "image", "label", fake_input_config(3), training=True, augmentation="crop_flip")
    transform = formatted.format["format_kwargs"]["transform"]
    assert isinstance(transform.batch_transform, SeededCropFlip)
    assert [type(step).__name__ for step in transform.image_transform.transforms] == [
        "Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"
    ]
    timm_rows = with_image_transform(rows, "image", "label", fake_input_config(3), training=True, augmentation="timm")
    assert timm_rows.format["format_kwargs"]["transform"].batch_transform is None

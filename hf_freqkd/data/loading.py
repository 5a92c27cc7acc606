"""Image classification data through ``datasets``: loading, column detection, timm transforms.

``dataset`` may be ``digits`` (the bundled offline set), a local image folder (``imagefolder``
layout: one sub-folder per class), a ``.parquet`` file or folder, or a Hub dataset id. Images and
labels are turned into ``pixel_values`` / ``labels`` by a ``datasets`` transform applied on access,
with the input size and normalisation read from the student model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .digits import DIGITS_NAME, load_digits_dataset

IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "png", "picture")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "target", "class", "category")
AUGMENTATIONS = ("crop_flip", "crop", "timm", "none")


def load_image_dataset(dataset: str, config_name: str | None = None, trust_remote_code: bool = False):
    """Return a ``datasets.DatasetDict`` for the dataset named by ``dataset``."""
    import datasets

    if dataset == DIGITS_NAME:
        return load_digits_dataset()
    path = Path(dataset)
    if path.is_file() and path.suffix == ".parquet" or path.is_dir() and any(path.glob("**/*.parquet")):
        files = str(path) if path.is_file() else str(path / "**" / "*.parquet")
        return datasets.load_dataset("parquet", data_files={"train": files})
    if path.is_dir():
        return datasets.load_dataset("imagefolder", data_dir=str(path))
    if os.path.exists(dataset):
        raise ValueError(f"dataset '{dataset}' is a file but not a .parquet file; expected a folder, a .parquet file, 'digits' or a Hub id")
    return datasets.load_dataset(dataset, config_name, trust_remote_code=trust_remote_code)


def pick_split(splits: Sequence[str], wanted: str | None, role: str, candidates: Sequence[str]) -> str | None:
    """The split to use for ``role`` (train / eval): the one asked for, else the first candidate present."""
    if wanted is not None:
        if wanted not in splits:
            raise ValueError(f"{role} split '{wanted}' does not exist; the dataset has splits: {', '.join(splits)}")
        return wanted
    return next((name for name in candidates if name in splits), None)


def detect_columns(dataset, image_column: str | None = None, label_column: str | None = None) -> tuple[str, str]:
    """Find the image and label columns by feature type, then by common name; overrides are checked."""
    import datasets

    features = dataset.features
    columns = list(features)
    for role, chosen in (("image", image_column), ("label", label_column)):
        if chosen is not None and chosen not in features:
            raise ValueError(f"{role} column '{chosen}' is not in the dataset; its columns are: {', '.join(columns)}")
    if image_column is None:
        image_column = next((c for c in columns if isinstance(features[c], datasets.Image)), None) or next(
            (c for c in IMAGE_COLUMN_NAMES if c in features), None
        )
        if image_column is None:
            raise ValueError(f"no image column found; the dataset's columns are: {', '.join(columns)}. Set image_column.")
    if label_column is None:
        label_column = next((c for c in columns if isinstance(features[c], datasets.ClassLabel)), None) or next(
            (c for c in LABEL_COLUMN_NAMES if c in features), None
        )
        if label_column is None:
            raise ValueError(f"no label column found; the dataset's columns are: {', '.join(columns)}. Set label_column.")
    return image_column, label_column


def count_classes(dataset, label_column: str) -> int:
    """``ClassLabel.num_classes`` when declared, else the largest label + 1 (labels must be >= 0 ints)."""
    import datasets

    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    labels = dataset.unique(label_column)
    bad = [label for label in labels if not isinstance(label, int) or label < 0]
    if bad:
        raise ValueError(f"label column '{label_column}' holds {bad[:5]!r}: expected integers >= 0 (or a ClassLabel feature)")
    return max(labels) + 1


def check_labels_in_range(dataset, label_column: str, num_classes: int, split: str) -> None:
    labels = dataset.unique(label_column)
    outside = sorted(label for label in labels if not 0 <= label < num_classes)
    if outside:
        raise ValueError(
            f"{split} split: labels {outside[:5]} lie outside the model's {num_classes} classes (0..{num_classes - 1})"
        )


def build_image_transform(input_config: dict[str, Any], training: bool, augmentation: str = "crop_flip"):
    """A torchvision transform for one PIL image: timm's eval transform, or a training augmentation.

    ``crop_flip`` is the CIFAR recipe (random crop with 1/8 padding + horizontal flip), ``crop`` the
    same without flip (for digits and text-like images), ``timm`` timm's ImageNet training
    transform (RandomResizedCrop + flip), ``none`` the eval transform.
    """
    import timm.data
    from torchvision import transforms

    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation '{augmentation}' is unknown; expected one of {', '.join(AUGMENTATIONS)}")
    channels, height, width = input_config["input_size"]
    common = dict(
        input_size=input_config["input_size"],
        mean=input_config["mean"],
        std=input_config["std"],
        interpolation=input_config.get("interpolation", "bilinear"),
    )
    if not training or augmentation == "none":
        return timm.data.create_transform(is_training=False, crop_pct=input_config.get("crop_pct", 1.0), **common)
    if augmentation == "timm":
        return timm.data.create_transform(is_training=True, **common)
    steps = [
        transforms.Resize((height, width)),
        transforms.RandomCrop((height, width), padding=max(1, height // 8)),
    ]
    if augmentation == "crop_flip":
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(input_config["mean"], input_config["std"])]
    return transforms.Compose(steps)


class ImageClassificationTransform:
    """``datasets`` transform: rows of (image, label) -> ``pixel_values`` tensors and ``labels``."""

    def __init__(self, image_column: str, label_column: str, image_transform, channels: int):
        self.image_column = image_column
        self.label_column = label_column
        self.image_transform = image_transform
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return {
            "pixel_values": [self.image_transform(image.convert(self.mode)) for image in batch[self.image_column]],
            "labels": batch[self.label_column],
        }


def with_image_transform(dataset, image_column: str, label_column: str, input_config: dict[str, Any], training: bool, augmentation: str):
    """Return ``dataset`` formatted to yield ``pixel_values`` and ``labels`` for the model."""
    transform = build_image_transform(input_config, training, augmentation)
    return dataset.with_transform(
        ImageClassificationTransform(image_column, label_column, transform, input_config["input_size"][0])
    )

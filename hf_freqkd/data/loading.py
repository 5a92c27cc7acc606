"""Image classification data through ``datasets``: loading, column detection, timm transforms.

``dataset`` may be ``digits`` (the bundled offline set), ``fine_grained_synthetic`` (generated
offline, sized by ``dataset_config_name``; see :mod:`hf_freqkd.data.fine_grained`),
``shapes_segmentation`` (generated offline segmentation masks, likewise; see
:mod:`hf_freqkd.data.shapes_segmentation`), a local image folder (``imagefolder``
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
from .fine_grained import FINE_GRAINED_NAME, load_fine_grained_dataset, parse_fine_grained_config
from .seeding import ROW_INDEX_COLUMN, SeededAugmentation, with_row_index
from .shapes_segmentation import SHAPES_SEGMENTATION_NAME, load_shapes_segmentation, parse_shapes_config

IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "png", "picture")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "target", "class", "category")
AUGMENTATIONS = ("crop_flip", "crop", "timm", "none")


def load_image_dataset(dataset: str, config_name: str | None = None, trust_remote_code: bool = False):
    """Return a ``datasets.DatasetDict`` for the dataset named by ``dataset``."""
    import datasets

    if dataset == DIGITS_NAME:
        return load_digits_dataset()
    if dataset == FINE_GRAINED_NAME:
        return load_fine_grained_dataset(**vars(parse_fine_grained_config(config_name)))
    if dataset == SHAPES_SEGMENTATION_NAME:
        return load_shapes_segmentation(**parse_shapes_config(config_name))
    path = Path(dataset)
    if path.is_file() and path.suffix == ".parquet" or path.is_dir() and any(path.glob("**/*.parquet")):
        files = str(path) if path.is_file() else str(path / "**" / "*.parquet")
        _check_parquet_has_rows(path, dataset)
        return datasets.load_dataset("parquet", data_files={"train": files})
    if path.is_dir():
        try:
            return datasets.load_dataset("imagefolder", data_dir=str(path))
        except datasets.data_files.EmptyDatasetError:
            raise ValueError(
                f"dataset folder '{dataset}' holds no image files: expected the imagefolder layout "
                "<folder>/<split>/<class>/<image> (or <folder>/<class>/<image>)"
            ) from None
    if os.path.exists(dataset):
        raise ValueError(f"dataset '{dataset}' is a file but not a .parquet file; expected a folder, a .parquet file, 'digits' or a Hub id")
    # A Hub id is ORG/NAME: anything shaped like a path is a local folder or file that is missing.
    if dataset.startswith(("/", ".", "~")) or dataset.count("/") > 1 or os.sep != "/" and os.sep in dataset:
        raise FileNotFoundError(
            f"dataset '{dataset}' does not exist: expected 'digits', a local image folder, a .parquet file or a Hub id (ORG/NAME)"
        )
    try:
        return datasets.load_dataset(dataset, config_name, trust_remote_code=trust_remote_code)
    except (FileNotFoundError, ConnectionError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(
            f"dataset '{dataset}' could not be loaded ({reason}): check the Hub id, or give a local image folder or .parquet file"
        ) from None


def _check_parquet_has_rows(path: Path, dataset: str) -> None:
    """datasets reports an empty parquet file as 'Instruction "train" corresponds to no data!'."""
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.glob("**/*.parquet"))
    try:
        rows = sum(pq.ParquetFile(file).metadata.num_rows for file in files)
    except Exception as error:  # noqa: BLE001 - any reader failure means "not a parquet file"
        raise ValueError(f"dataset '{dataset}' could not be read as parquet ({error}); check the file") from None
    if rows == 0:
        raise ValueError(f"dataset '{dataset}' is empty: its parquet file(s) hold no rows; point dataset at data with images")


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
            f"{split} split: labels {outside[:5]} lie outside the model's {num_classes} classes (0..{num_classes - 1}); "
            f"set num_classes to at least {max(outside) + 1} (or leave it unset), or remove those rows"
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

    def __init__(self, image_column: str, label_column: str, image_transform, channels: int, image_feature=None, seeding=None):
        self.image_column = image_column
        self.label_column = label_column
        self.image_transform = image_transform
        self.mode = "L" if channels == 1 else "RGB"
        #: the column's ``datasets.Image`` feature when images arrive undecoded (decoded here, see below)
        self.image_feature = image_feature
        #: per-sample random state for training augmentation (see hf_freqkd.data.seeding)
        self.seeding = seeding

    def decode(self, image):
        if self.image_feature is None or not isinstance(image, dict):
            return image
        try:
            return self.image_feature.decode_example(image)
        except Exception as error:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
            source = image.get("path") or "an in-memory image"
            raise ValueError(
                f"image '{source}' could not be read ({error}): the file is truncated or not an image; remove or replace it"
            ) from None

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images = [self.decode(image).convert(self.mode) for image in batch[self.image_column]]
        rows = batch.get(ROW_INDEX_COLUMN)
        if self.seeding is not None and rows is not None:
            pixel_values = []
            for image, row in zip(images, rows):
                with self.seeding.sample_random_state(row):
                    pixel_values.append(self.image_transform(image))
        else:
            pixel_values = [self.image_transform(image) for image in images]
        return {"pixel_values": pixel_values, "labels": batch[self.label_column]}


def with_image_transform(dataset, image_column: str, label_column: str, input_config: dict[str, Any], training: bool, augmentation: str):
    """Return ``dataset`` formatted to yield ``pixel_values`` and ``labels`` for the model."""
    import datasets

    transform = build_image_transform(input_config, training, augmentation)
    seeding = None
    if training and augmentation != "none":
        seeding = SeededAugmentation()  # DistillationTrainer sets its seed and epoch
        dataset = with_row_index(dataset)
    feature = dataset.features.get(image_column)
    if isinstance(feature, datasets.Image) and feature.decode:
        # Decode in the transform, not in datasets, so that a broken file is reported by name.
        dataset = dataset.cast_column(image_column, datasets.Image(mode=feature.mode, decode=False))
    else:
        feature = None
    return dataset.with_transform(
        ImageClassificationTransform(image_column, label_column, transform, input_config["input_size"][0], feature, seeding)
    )

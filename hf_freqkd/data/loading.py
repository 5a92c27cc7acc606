"""Image classification data through ``datasets``: loading, column detection, timm transforms.

``dataset`` may be ``digits`` (the bundled offline set), ``fine_grained_synthetic`` (generated
offline, sized by ``dataset_config_name``; see :mod:`hf_freqkd.data.fine_grained`),
``shapes_segmentation`` (generated offline segmentation masks, likewise; see
:mod:`hf_freqkd.data.shapes_segmentation`), a local image folder (``imagefolder``
layout: one sub-folder per class), a ``.parquet`` file, a folder in a Hub dataset's layout
(``train-*.parquet`` / ``test-*.parquet``, ``data/<split>-*``, ``<split>/<class>/<image>``: split by
``datasets`` as it splits the Hub repo), or a Hub dataset id. Images and
labels are turned into ``pixel_values`` / ``labels`` by a ``datasets`` transform applied on access,
with the input size and normalisation read from the student model.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..sources import (
    hub_offline_message,
    hub_unreachable_message,
    is_hub_offline,
    is_hub_repo_id,
    local_path,
    looks_like_path,
    missing_path_error,
)
from .digits import DIGITS_NAME, load_digits_dataset
from .fine_grained import FINE_GRAINED_NAME, load_fine_grained_dataset, parse_fine_grained_config
from .seeding import ROW_INDEX_COLUMN, SeededAugmentation, with_row_index
from .shapes_segmentation import SHAPES_SEGMENTATION_NAME, load_shapes_segmentation, parse_shapes_config

IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "png", "picture")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "target", "class", "category")
AUGMENTATIONS = ("crop_flip", "crop", "timm", "none")
#: data sets generated offline by name (no files, no Hub)
GENERATED_DATASETS = (DIGITS_NAME, SHAPES_SEGMENTATION_NAME, FINE_GRAINED_NAME)
_FILES_AND_FOLDERS = "a local image folder (<folder>/<class>/<image>), a .parquet file or folder"
LOCAL_DATASET_SOURCES = f"{_FILES_AND_FOLDERS}, or a generated set ({', '.join(GENERATED_DATASETS)})"
DATASET_SOURCES = f"{_FILES_AND_FOLDERS}, a generated set ({', '.join(GENERATED_DATASETS)}) or a Hub dataset id (ORG/NAME)"


def load_image_dataset(dataset: str, config_name: str | None = None, trust_remote_code: bool = False):
    """Return a ``datasets.DatasetDict`` for the dataset named by ``dataset``.

    A local name is told from a Hub id before anything is downloaded (see :mod:`hf_freqkd.sources`):
    a mistyped folder is reported as missing, with near names, instead of being looked up on the Hub.
    """
    if dataset == DIGITS_NAME:
        return load_digits_dataset()
    if dataset == FINE_GRAINED_NAME:
        return load_fine_grained_dataset(**vars(parse_fine_grained_config(config_name)))
    if dataset == SHAPES_SEGMENTATION_NAME:
        return load_shapes_segmentation(**parse_shapes_config(config_name))
    if not isinstance(dataset, str) or not dataset:
        raise DataError(f"dataset {dataset!r} is invalid: expected {DATASET_SOURCES}")
    path = local_path(dataset)
    if path.exists():
        return _load_local_dataset(path, dataset, config_name)
    # A near name of a generated set ('digit') is a typo, not a Hub repo without an organisation.
    near_generated = difflib.get_close_matches(dataset, GENERATED_DATASETS, n=1, cutoff=0.6)
    if looks_like_path(dataset) or not is_hub_repo_id(dataset) or near_generated:
        raise missing_path_error("dataset", dataset, DATASET_SOURCES, known_names=GENERATED_DATASETS)
    return _load_hub_dataset(dataset, config_name, trust_remote_code)


def _load_local_dataset(path: Path, dataset: str, config_name: str | None):
    """A ``.parquet`` file, or a folder loaded the way ``datasets`` loads a Hub repo of the same layout."""
    import datasets

    if path.is_file():
        if path.suffix != ".parquet":
            raise DataError(f"dataset '{dataset}' is a file but not a .parquet file; expected {DATASET_SOURCES}")
        _check_parquet_has_rows([path], dataset)
        return datasets.load_dataset("parquet", data_files={"train": str(path)})
    parquet_files = sorted(path.glob("**/*.parquet"))
    if parquet_files:
        _check_parquet_has_rows(parquet_files, dataset)
    try:
        # datasets' own inference, as for a Hub id: the README's configs, else splits from file and folder
        # names (train-*.parquet / test-*.parquet, data/validation-00000-of-00001.parquet, train/<class>/...),
        # the builder (parquet, imagefolder, ...) from the most common file type.
        return datasets.load_dataset(str(path), config_name)
    except datasets.data_files.EmptyDatasetError:
        raise DataError(
            f"dataset folder '{dataset}' holds no image files: expected the imagefolder layout "
            "<folder>/<split>/<class>/<image> (or <folder>/<class>/<image>), or .parquet files"
        ) from None


def _load_hub_dataset(dataset: str, config_name: str | None, trust_remote_code: bool):
    import datasets

    instead = f"give {LOCAL_DATASET_SOURCES}"
    unreachable = hub_unreachable_message("dataset", dataset, instead)
    if unreachable:
        raise DataError(unreachable)
    try:
        return datasets.load_dataset(dataset, config_name, trust_remote_code=trust_remote_code)
    except (FileNotFoundError, ConnectionError) as error:
        if is_hub_offline():
            raise DataError(hub_offline_message("dataset", dataset, instead)) from None
        reason = " ".join(str(error).split())
        raise DataError(
            f"dataset '{dataset}' is not a local path and could not be loaded from the Hub ({reason}): "
            f"check the Hub id, or {instead}"
        ) from None


def _check_parquet_has_rows(files: Sequence[Path], dataset: str) -> None:
    """datasets reports an empty parquet file as 'Instruction "train" corresponds to no data!'."""
    import pyarrow.parquet as pq

    try:
        rows = sum(pq.ParquetFile(file).metadata.num_rows for file in files)
    except Exception as error:  # noqa: BLE001 - any reader failure means "not a parquet file"
        raise DataError(f"dataset '{dataset}' could not be read as parquet ({error}); check the file") from None
    if rows == 0:
        raise DataError(f"dataset '{dataset}' is empty: its parquet file(s) hold no rows; point dataset at data with images")


def seeded_subset(dataset, max_samples: int | None, seed: int, label_column: str | None = None):
    """At most ``max_samples`` rows drawn at random with ``seed`` (``max_train_samples`` / ``max_eval_samples``).

    Not the first N rows: an image folder's rows come sorted by class, so those would hold only the
    first classes. As in the transformers example scripts, the rows are shuffled with the seed, then
    cut. When ``label_column`` is a ``ClassLabel`` the draw is stratified (datasets' stratified split),
    so every class keeps its share; a plain shuffle is used when a class is too rare for that (one row,
    or fewer rows kept or left out than there are classes). Without a cap the dataset is returned as is.
    """
    import datasets

    if not max_samples or max_samples >= len(dataset):
        return dataset
    from .seeding import quiet_datasets

    # A split of an already-selected dataset flattens its indices with a progress bar on stderr.
    with quiet_datasets():
        if label_column is not None and isinstance(dataset.features.get(label_column), datasets.ClassLabel):
            class_counts = Counter(dataset[label_column])
            if min(class_counts.values()) >= 2 and len(class_counts) <= min(max_samples, len(dataset) - max_samples):
                return dataset.train_test_split(train_size=max_samples, seed=seed, stratify_by_column=label_column)["train"]
        return dataset.shuffle(seed=seed).select(range(max_samples))


def pick_split(splits: Sequence[str], wanted: str | None, role: str, candidates: Sequence[str]) -> str | None:
    """The split to use for ``role`` (train / eval): the one asked for, else the first candidate present."""
    if wanted is not None:
        if wanted not in splits:
            raise ConfigError(f"{role} split '{wanted}' does not exist; the dataset has splits: {', '.join(splits)}")
        return wanted
    return next((name for name in candidates if name in splits), None)


def detect_columns(dataset, image_column: str | None = None, label_column: str | None = None) -> tuple[str, str]:
    """Find the image and label columns by feature type, then by common name; overrides are checked."""
    import datasets

    features = dataset.features
    columns = list(features)
    for role, chosen in (("image", image_column), ("label", label_column)):
        if chosen is not None and chosen not in features:
            raise ConfigError(f"{role} column '{chosen}' is not in the dataset; its columns are: {', '.join(columns)}")
    if image_column is None:
        image_column = next((c for c in columns if isinstance(features[c], datasets.Image)), None) or next(
            (c for c in IMAGE_COLUMN_NAMES if c in features), None
        )
        if image_column is None:
            raise DataError(f"no image column found; the dataset's columns are: {', '.join(columns)}. Set image_column.")
    if label_column is None:
        label_column = next((c for c in columns if isinstance(features[c], datasets.ClassLabel)), None) or next(
            (c for c in LABEL_COLUMN_NAMES if c in features), None
        )
        if label_column is None:
            raise DataError(f"no label column found; the dataset's columns are: {', '.join(columns)}. Set label_column.")
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
        raise DataError(f"label column '{label_column}' holds {bad[:5]!r}: expected integers >= 0 (or a ClassLabel feature)")
    return max(labels) + 1


def check_labels_in_range(dataset, label_column: str, num_classes: int, split: str) -> None:
    # Not dataset.unique(): on a subset (an indices mapping) it first rewrites every selected row, images included.
    labels = set(dataset[label_column])
    outside = sorted(label for label in labels if not 0 <= label < num_classes)
    if outside:
        raise DataError(
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
        raise ConfigError(f"augmentation '{augmentation}' is unknown; expected one of {', '.join(AUGMENTATIONS)}")
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
            raise DataError(
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

"""Image classification data through ``datasets``: loading, column detection, timm transforms.

``dataset`` may be ``digits`` (the bundled offline set), ``fine_grained_synthetic`` (generated
offline, sized by ``dataset_config_name``; see :mod:`hf_freqkd.data.fine_grained`),
``shapes_segmentation`` (generated offline segmentation masks, likewise; see
:mod:`hf_freqkd.data.shapes_segmentation`), ``shapes_detection`` (generated offline boxes, likewise;
see :mod:`hf_freqkd.data.shapes_detection`), a local image folder (``imagefolder``
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

import numpy as np
import torch

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
from .local_folder import load_local_folder, scan_folder
from ..teacher_cache import VIEW_EPOCH, VIEW_ROW
from .seeding import ROW_INDEX_COLUMN, SeededAugmentation, with_row_index
from .shapes_detection import SHAPES_DETECTION_NAME, load_shapes_detection, parse_shapes_detection_config
from .shapes_segmentation import SHAPES_SEGMENTATION_NAME, load_shapes_segmentation, parse_shapes_config, shapes_class_names

IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "png", "picture")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "target", "class", "category")
AUGMENTATIONS = ("crop_flip", "crop", "timm", "none")
#: data sets generated offline by name (no files, no Hub)
GENERATED_DATASETS = (DIGITS_NAME, SHAPES_SEGMENTATION_NAME, SHAPES_DETECTION_NAME, FINE_GRAINED_NAME)
_FILES_AND_FOLDERS = "a local image folder (<folder>/<class>/<image>), a .parquet file or folder"
LOCAL_DATASET_SOURCES = f"{_FILES_AND_FOLDERS}, or a generated set ({', '.join(GENERATED_DATASETS)})"
DATASET_SOURCES = f"{_FILES_AND_FOLDERS}, a generated set ({', '.join(GENERATED_DATASETS)}) or a Hub dataset id (ORG/NAME)"


def load_image_dataset(dataset: str, config_name: str | None = None, trust_remote_code: bool = False, streaming: bool = False):
    """Return a ``datasets.DatasetDict`` for the dataset named by ``dataset``.

    A local name is told from a Hub id before anything is downloaded (see :mod:`hf_freqkd.sources`):
    a mistyped folder is reported as missing, with near names, instead of being looked up on the Hub.
    ``streaming=True`` returns an ``IterableDatasetDict`` of a parquet file, a folder of parquet shards
    or a Hub id, and refuses the rest (:func:`hf_freqkd.data.streaming.load_streaming_dataset`).
    """
    if streaming:
        from .streaming import load_streaming_dataset

        return load_streaming_dataset(dataset, config_name, trust_remote_code)
    if dataset == DIGITS_NAME:
        return load_digits_dataset()
    if dataset == FINE_GRAINED_NAME:
        return load_fine_grained_dataset(**vars(parse_fine_grained_config(config_name)))
    if dataset == SHAPES_SEGMENTATION_NAME:
        return load_shapes_segmentation(**parse_shapes_config(config_name))
    if dataset == SHAPES_DETECTION_NAME:
        return load_shapes_detection(**parse_shapes_detection_config(config_name))
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


def generated_class_names(dataset: str, config_name: str | None = None) -> list[str] | None:
    """The class names of a generated set whose labels carry none (the segmentation masks), else None."""
    return shapes_class_names(config_name) if dataset == SHAPES_SEGMENTATION_NAME else None


def _load_local_dataset(path: Path, dataset: str, config_name: str | None):
    """A ``.parquet`` file, or a folder loaded the way ``datasets`` loads a Hub repo of the same layout."""
    import datasets

    if path.is_file():
        if path.suffix != ".parquet":
            raise DataError(f"dataset '{dataset}' is a file but not a .parquet file; expected {DATASET_SOURCES}")
        _check_parquet_has_rows([path], dataset)
        return datasets.load_dataset("parquet", data_files={"train": str(path)})
    scan = scan_folder(path)
    parquet_files = scan.ending_with(".parquet")
    if parquet_files:
        _check_parquet_has_rows(parquet_files, dataset)
    try:
        # datasets' inference, as for a Hub id, on one scan of the tree: the README's configs, else splits from
        # file and folder names (train-*.parquet / test-*.parquet, data/validation-00000-of-00001.parquet,
        # train/<class>/...), the builder (parquet, imagefolder, ...) from the most common file type.
        return load_local_folder(path, config_name, scan)
    except datasets.data_files.EmptyDatasetError:
        raise DataError(
            f"dataset folder '{dataset}' holds no image files: expected the imagefolder layout "
            "<folder>/<split>/<class>/<image> (or <folder>/<class>/<image>), or .parquet files"
        ) from None


def _load_hub_dataset(dataset: str, config_name: str | None, trust_remote_code: bool, streaming: bool = False):
    import datasets

    instead = f"give {LOCAL_DATASET_SOURCES}"
    unreachable = hub_unreachable_message("dataset", dataset, instead)
    if unreachable:
        raise DataError(unreachable)
    try:
        return datasets.load_dataset(dataset, config_name, trust_remote_code=trust_remote_code, streaming=streaming)
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

    For ``crop`` / ``crop_flip`` training, ``with_image_transform`` runs :class:`SeededCropFlip`
    instead, which computes the same images with tensor ops on a whole batch; this pipeline is its
    reference (tests compare the two) and the plain pipeline of ``hf-freqkd benchmark data``.
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
        # The model's own crop mode too: an export's image processor reads the same pretrained_cfg.
        return timm.data.create_transform(
            is_training=False, crop_pct=input_config.get("crop_pct", 1.0), crop_mode=input_config.get("crop_mode"), **common
        )
    if augmentation == "timm":
        return timm.data.create_transform(is_training=True, **common)
    steps = [
        transforms.Resize((height, width)),
        transforms.RandomCrop((height, width), padding=crop_padding(height)),
    ]
    if augmentation == "crop_flip":
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(input_config["mean"], input_config["std"])]
    return transforms.Compose(steps)


def crop_padding(height: int) -> int:
    """Zero padding of the ``crop`` / ``crop_flip`` random crop: 1/8 of the height (4 px at 32 px), at least 1."""
    return max(1, height // 8)


class SeededCropFlip:
    """The ``crop`` / ``crop_flip`` training transform of a batch of PIL images, with tensor ops.

    Computes what :func:`build_image_transform`'s torchvision pipeline (Resize, RandomCrop with zero
    padding, RandomHorizontalFlip, ToTensor, Normalize) computes, bit for bit, making the same
    draws in the same order (crop top, crop left, flip) from the generator given for each image
    instead of torch's global one: ``torch.Generator().manual_seed(s)`` here gives the image that
    ``torch.manual_seed(s)`` then the torchvision pipeline gives. The saving is in doing it once per
    batch: one uint8 array for the batch, slices for the crops, one float conversion and
    normalisation, no per-image PIL padding or tensor conversion.
    """

    def __init__(self, input_config: dict[str, Any], flip: bool):
        _, self.height, self.width = input_config["input_size"]
        self.padding = crop_padding(self.height)
        self.flip = flip
        self.mean = torch.as_tensor(input_config["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(input_config["std"], dtype=torch.float32).view(-1, 1, 1)

    def draw(self, generator) -> tuple[int, int, bool]:
        """(top, left, flipped) of one image, drawn as RandomCrop.get_params and RandomHorizontalFlip draw them."""
        positions = 2 * self.padding + 1  # padded size - crop size + 1
        top = int(torch.randint(0, positions, size=(1,), generator=generator).item())
        left = int(torch.randint(0, positions, size=(1,), generator=generator).item())
        flipped = self.flip and bool(torch.rand(1, generator=generator) < 0.5)
        return top, left, flipped

    def pixels(self, images) -> torch.Tensor:
        """The images as one (N, C, H, W) uint8 tensor, each resized to the input size as ``Resize`` does."""
        from torchvision.transforms import functional

        size = (self.width, self.height)
        resized = [image if image.size == size else functional.resize(image, [self.height, self.width]) for image in images]
        batch = torch.from_numpy(np.stack([np.asarray(image) for image in resized]))
        return batch.unsqueeze(1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)

    def __call__(self, images, generators) -> list[torch.Tensor]:
        """``pixel_values`` of ``images`` (PIL, one mode), one generator (or None: torch's global one) per image."""
        if not images:
            return []
        pixels = self.pixels(images)
        count, channels = pixels.shape[:2]
        pad, height, width = self.padding, self.height, self.width
        padded = pixels.new_zeros((count, channels, height + 2 * pad, width + 2 * pad))
        padded[:, :, pad : pad + height, pad : pad + width] = pixels
        views = []
        for index, generator in enumerate(generators):
            top, left, flipped = self.draw(generator)
            view = padded[index, :, top : top + height, left : left + width]
            views.append(view.flip(-1) if flipped else view)
        # ToTensor's division then Normalize's subtraction and division, in float32 as they compute them.
        batch = torch.stack(views).to(torch.float32).div_(255).sub_(self.mean).div_(self.std)
        return list(batch.unbind(0))


def decode_image(image, image_feature=None):
    """``image`` as datasets gives it, decoded with its column's ``datasets.Image`` feature when it
    arrives undecoded (a dict of bytes / path); a broken file is a DataError naming it."""
    if image_feature is None or not isinstance(image, dict):
        return image
    try:
        return image_feature.decode_example(image)
    except Exception as error:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        source = image.get("path") or "an in-memory image"
        raise DataError(
            f"image '{source}' could not be read ({error}): the file is truncated or not an image; remove or replace it"
        ) from None


class ImageClassificationTransform:
    """``datasets`` transform: rows of (image, label) -> ``pixel_values`` tensors and ``labels``.

    ``batch_transform`` (a :class:`SeededCropFlip`), when given, transforms the whole batch with
    each row's own generator; otherwise ``image_transform`` runs image by image, and with
    ``seeding`` each image is drawn from the process's generators seeded for its row.
    """

    def __init__(
        self, image_column: str, label_column: str, image_transform, channels: int, image_feature=None, seeding=None, batch_transform=None
    ):
        self.image_column = image_column
        self.label_column = label_column
        self.image_transform = image_transform
        self.mode = "L" if channels == 1 else "RGB"
        #: the column's ``datasets.Image`` feature when images arrive undecoded (decoded here, see below)
        self.image_feature = image_feature
        #: per-sample random state for training augmentation (see hf_freqkd.data.seeding)
        self.seeding = seeding
        self.batch_transform = batch_transform
        #: set by a trainer reading a teacher cache (hf_freqkd.teacher_cache): each row also carries
        #: which view it is, (epoch, row), so the cached teacher outputs of that very view are read
        self.emit_view_ids = False

    def decode(self, image):
        return decode_image(image, self.image_feature)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images = [self.decode(image) for image in batch[self.image_column]]
        images = [image if image.mode == self.mode else image.convert(self.mode) for image in images]
        rows = batch.get(ROW_INDEX_COLUMN)
        seeded = self.seeding is not None and rows is not None
        if self.batch_transform is not None:
            generators = self.seeding.generators(rows) if seeded else [None] * len(images)
            pixel_values = self.batch_transform(images, generators)
        elif seeded:
            # One save and restore of the process's generators for the batch, one seeding per image.
            with self.seeding.process_random_state_kept():
                pixel_values = []
                for image, row in zip(images, rows):
                    self.seeding.seed_process(row)
                    pixel_values.append(self.image_transform(image))
        else:
            pixel_values = [self.image_transform(image) for image in images]
        output = {"pixel_values": pixel_values, "labels": batch[self.label_column]}
        if self.emit_view_ids:
            epoch = self.seeding.epoch if self.seeding is not None else 0
            output.update({VIEW_ROW: list(rows), VIEW_EPOCH: [epoch] * len(images)})
        return output


def with_image_transform(dataset, image_column: str, label_column: str, input_config: dict[str, Any], training: bool, augmentation: str):
    """Return ``dataset`` formatted to yield ``pixel_values`` and ``labels`` for the model.

    Training with ``crop`` / ``crop_flip`` runs :class:`SeededCropFlip` on each batch; ``timm``
    runs timm's transform image by image (its RandomResizedCrop has no batched path here), and is
    several times slower per image.
    """
    if training:
        # Row indices seed the augmentation and name the views a teacher cache holds.
        dataset = with_row_index(dataset)
    dataset, transform = classification_transform(dataset, image_column, label_column, input_config, training, augmentation)
    return dataset.with_transform(transform)


def classification_transform(dataset, image_column: str, label_column: str, input_config: dict[str, Any], training: bool, augmentation: str):
    """(``dataset`` with its images left undecoded, the :class:`ImageClassificationTransform` for it).

    Shared by :func:`with_image_transform` and the streamed path (:mod:`hf_freqkd.data.streaming`).
    """
    import datasets

    transform = build_image_transform(input_config, training, augmentation)
    seeding = batch_transform = None
    if training and augmentation != "none":
        seeding = SeededAugmentation()  # DistillationTrainer sets its seed and epoch
    if training and augmentation in ("crop", "crop_flip"):
        batch_transform = SeededCropFlip(input_config, flip=augmentation == "crop_flip")
    feature = (dataset.features or {}).get(image_column)
    if isinstance(feature, datasets.Image) and feature.decode:
        # Decode in the transform, not in datasets, so that a broken file is reported by name.
        dataset = dataset.cast_column(image_column, datasets.Image(mode=feature.mode, decode=False))
    else:
        feature = None
    return dataset, ImageClassificationTransform(
        image_column, label_column, transform, input_config["input_size"][0], feature, seeding, batch_transform
    )

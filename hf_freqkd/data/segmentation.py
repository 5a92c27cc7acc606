"""Semantic segmentation data through ``datasets``: mask columns, class ids and paired transforms.

A segmentation dataset has an image column and a mask column: a single-channel image (or a 2-D
array) of class ids per pixel, as in scene_parse_150 (``image`` / ``annotation``). Pixels equal to
``ignore_index`` (255 by default) carry no label. With ``reduce_labels`` the value 0 is ignored too
and every other value shifts down by one (ADE20k's 0 = "other").

The transform applies one geometric transform (resize, crop, flip) to the image and its mask
together (torchvision ``transforms.v2``: masks are resized with nearest neighbour and padded with
the ignore value) and yields ``pixel_values`` (float, normalised) and ``labels`` (long, H x W),
where every ignored pixel is :data:`IGNORE_LABEL` = -100: the value ``torch.nn.functional.cross_entropy``,
the mIoU metric and the Trainer's padding of evaluation batches all skip.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .loading import AUGMENTATIONS, IMAGE_COLUMN_NAMES

MASK_COLUMN_NAMES = ("annotation", "mask", "masks", "segmentation", "semantic_map", "seg_map", "label", "labels", "gt")
#: the label of ignored pixels in ``labels`` tensors (PyTorch's cross-entropy default ignore_index)
IGNORE_LABEL = -100
#: training crops scale the image to this fraction of its area at least (augmentation "timm")
RANDOM_RESIZED_CROP_SCALE = (0.25, 1.0)


def detect_mask_columns(dataset, image_column: str | None = None, mask_column: str | None = None) -> tuple[str, str]:
    """The image and mask columns: the given ones (checked), else by common name and feature type."""
    import datasets

    features = dataset.features
    columns = list(features)
    for role, chosen in (("image", image_column), ("mask", mask_column)):
        if chosen is not None and chosen not in features:
            raise DataError(f"{role} column '{chosen}' is not in the dataset; its columns are: {', '.join(columns)}")
    image_typed = [c for c in columns if isinstance(features[c], datasets.Image)]
    if image_column is None:
        named = [c for c in IMAGE_COLUMN_NAMES if c in features and c != mask_column]
        typed = [c for c in image_typed if c != mask_column and c not in MASK_COLUMN_NAMES]
        image_column = next(iter(named + typed), None)
        if image_column is None:
            raise DataError(f"no image column found; the dataset's columns are: {', '.join(columns)}. Set image_column.")
    if mask_column is None:
        named = [c for c in MASK_COLUMN_NAMES if c in features and c != image_column]
        others = [c for c in image_typed if c != image_column]
        mask_column = next(iter(named + others), None)
        if mask_column is None:
            raise DataError(
                f"no mask column found; the dataset's columns are: {', '.join(columns)}. "
                "Set mask_column to the column holding the class-id masks."
            )
    if image_column == mask_column:
        raise DataError(f"image_column and mask_column are both '{image_column}': the masks must be a column of their own")
    return image_column, mask_column


def mask_array(mask: Any, column: str = "mask") -> np.ndarray:
    """A mask (PIL image of mode L / P / I / I;16, array or nested list) as a 2-D integer array."""
    mode = getattr(mask, "mode", None)
    if mode is not None and mode not in ("L", "P", "I", "I;16", "1"):
        raise DataError(
            f"mask column '{column}' holds {mode} images: expected single-channel class-id masks "
            "(mode L, P or I), not colour-coded ones"
        )
    values = np.asarray(mask)
    if values.ndim != 2 or not (np.issubdtype(values.dtype, np.integer) or values.dtype == bool):
        raise DataError(f"mask column '{column}' holds values of shape {values.shape} and type {values.dtype}: expected 2-D integer class ids")
    return values


def encode_labels(values: np.ndarray, ignore_index: int, reduce_labels: bool) -> np.ndarray:
    """Raw mask values -> class ids (int64) with :data:`IGNORE_LABEL` where nothing is labelled."""
    labels = values.astype(np.int64)
    ignored = labels == ignore_index
    if reduce_labels:
        ignored |= labels == 0
        labels = labels - 1
    labels[ignored] = IGNORE_LABEL
    return labels


_MASK_VALUES_CACHE: dict[tuple[str, str], np.ndarray] = {}


def mask_values(dataset, mask_column: str) -> np.ndarray:
    """The distinct raw values of every mask in ``dataset`` (one pass over the column, cached)."""
    key = (getattr(dataset, "_fingerprint", None) or str(id(dataset)), mask_column)
    if key not in _MASK_VALUES_CACHE:
        seen: set[int] = set()
        for batch in dataset.select_columns([mask_column]).iter(batch_size=64):
            for mask in batch[mask_column]:
                seen.update(np.unique(mask_array(mask, mask_column)).tolist())
        _MASK_VALUES_CACHE[key] = np.array(sorted(seen), dtype=np.int64)
    return _MASK_VALUES_CACHE[key]


def count_mask_classes(dataset, mask_column: str, ignore_index: int = 255, reduce_labels: bool = False) -> int:
    """Largest class id in the masks + 1 (ignored pixels aside); scans every mask once."""
    raw = mask_values(dataset, mask_column)
    labels = encode_labels(raw, ignore_index, reduce_labels)
    labelled = labels[labels != IGNORE_LABEL]
    if labelled.size == 0:
        raise DataError(f"every pixel of mask column '{mask_column}' is ignored (values {raw.tolist()[:5]}, ignore_index = {ignore_index})")
    if labelled.min() < 0:
        raise DataError(f"mask column '{mask_column}' holds negative values {sorted(set(raw[labels < 0].tolist()) - {ignore_index})[:5]}: expected class ids >= 0")
    return int(labelled.max()) + 1


def check_mask_labels_in_range(
    dataset, mask_column: str, num_classes: int, split: str, ignore_index: int = 255, reduce_labels: bool = False
) -> None:
    """Raise if a mask holds a value that is neither a class id in [0, num_classes) nor ignored."""
    raw = mask_values(dataset, mask_column)
    labels = encode_labels(raw, ignore_index, reduce_labels)
    bad = raw[(labels != IGNORE_LABEL) & ((labels < 0) | (labels >= num_classes))]
    if bad.size:
        shift = " after reduce_labels (value v is class v - 1, 0 is ignored)" if reduce_labels else ""
        raise DataError(
            f"{split} split: mask column '{mask_column}' holds values {bad.tolist()[:5]} that are neither class ids of the "
            f"model's {num_classes} classes (0..{num_classes - 1}){shift} nor the ignore_index {ignore_index}; "
            "set num_classes or ignore_index to match the dataset"
        )


def build_segmentation_transform(input_config: dict[str, Any], training: bool, augmentation: str = "crop_flip", ignore_value: int = 255):
    """A torchvision v2 transform of (PIL image, Mask) pairs to the model's size and normalisation.

    Evaluation and ``none``: resize both to the input size. ``crop`` / ``crop_flip``: the same,
    then a random crop with 1/8 padding (the mask padded with ``ignore_value``), ``crop_flip`` also
    flips horizontally; ``timm``: a random resized crop (area 25-100 %) and a flip.
    """
    from torchvision import tv_tensors
    from torchvision.transforms import InterpolationMode, v2

    if augmentation not in AUGMENTATIONS:
        raise ConfigError(f"augmentation '{augmentation}' is unknown; expected one of {', '.join(AUGMENTATIONS)}")
    _, height, width = input_config["input_size"]
    interpolation = InterpolationMode(input_config.get("interpolation", "bilinear"))
    if training and augmentation == "timm":
        steps = [v2.RandomResizedCrop((height, width), scale=RANDOM_RESIZED_CROP_SCALE, interpolation=interpolation), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize((height, width), interpolation=interpolation)]
        if training and augmentation in ("crop", "crop_flip"):
            fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_value, "others": 0}
            steps.append(v2.RandomCrop((height, width), padding=max(1, height // 8), fill=fill))
        if training and augmentation == "crop_flip":
            steps.append(v2.RandomHorizontalFlip())
    steps += [
        v2.ToImage(),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(input_config["mean"], input_config["std"]),
    ]
    return v2.Compose(steps)


class SegmentationTransform:
    """``datasets`` transform: rows of (image, mask) -> ``pixel_values`` and per-pixel ``labels``."""

    def __init__(self, image_column: str, mask_column: str, pair_transform, channels: int, ignore_index: int, reduce_labels: bool):
        self.image_column = image_column
        self.mask_column = mask_column
        self.pair_transform = pair_transform
        self.mode = "L" if channels == 1 else "RGB"
        self.ignore_index = ignore_index
        self.reduce_labels = reduce_labels

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        from torchvision import tv_tensors

        pixel_values, labels = [], []
        for image, mask in zip(batch[self.image_column], batch[self.mask_column]):
            values = mask_array(mask, self.mask_column)
            image_tensor, mask_tensor = self.pair_transform(image.convert(self.mode), tv_tensors.Mask(torch.from_numpy(values.astype(np.int32))))
            pixel_values.append(image_tensor.as_subclass(torch.Tensor))
            labels.append(torch.from_numpy(encode_labels(mask_tensor.numpy(), self.ignore_index, self.reduce_labels)))
        return {"pixel_values": pixel_values, "labels": labels}


def with_segmentation_transform(
    dataset,
    image_column: str,
    mask_column: str,
    input_config: dict[str, Any],
    training: bool,
    augmentation: str,
    ignore_index: int = 255,
    reduce_labels: bool = False,
):
    """Return ``dataset`` formatted to yield ``pixel_values`` and ``labels`` (long, H x W, -100 = ignored)."""
    transform = build_segmentation_transform(input_config, training, augmentation, ignore_value=ignore_index)
    return dataset.with_transform(
        SegmentationTransform(image_column, mask_column, transform, input_config["input_size"][0], ignore_index, reduce_labels)
    )


def segmentation_data_functions(train_data, data_args, num_classes: int | None = None):
    """What a run needs for ``task: segmentation``, in the classification functions' shapes.

    Returns ``(image_column, mask_column, num_classes, transform, check_labels)``: the detected
    columns, the class count (``num_classes`` if given, else read from the masks), and
    :func:`with_segmentation_transform` / :func:`check_mask_labels_in_range` with the data
    arguments' ``ignore_index`` and ``reduce_labels`` bound - called like ``with_image_transform``
    and ``check_labels_in_range``.
    """
    image_column, mask_column = detect_mask_columns(train_data, data_args.image_column, data_args.mask_column)
    settings = {"ignore_index": data_args.ignore_index, "reduce_labels": data_args.reduce_labels}
    num_classes = num_classes or count_mask_classes(train_data, mask_column, **settings)
    transform = functools.partial(with_segmentation_transform, **settings)
    check_labels = functools.partial(check_mask_labels_in_range, **settings)
    return image_column, mask_column, num_classes, transform, check_labels

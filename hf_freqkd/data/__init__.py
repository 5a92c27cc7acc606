"""Data: the bundled digits set, ``datasets`` loading, column detection and transforms."""

from .digits import load_digits_dataset
from .loading import (
    ImageClassificationTransform,
    build_image_transform,
    check_labels_in_range,
    count_classes,
    detect_columns,
    load_image_dataset,
    pick_split,
    with_image_transform,
)

__all__ = [
    "ImageClassificationTransform",
    "build_image_transform",
    "check_labels_in_range",
    "count_classes",
    "detect_columns",
    "load_digits_dataset",
    "load_image_dataset",
    "pick_split",
    "with_image_transform",
]

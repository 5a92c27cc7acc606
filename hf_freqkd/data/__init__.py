"""Data: the bundled digits set, ``datasets`` loading, column detection and transforms."""

from .digits import load_digits_dataset
from .fine_grained import load_fine_grained_dataset
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
from .segmentation import (
    SegmentationTransform,
    check_mask_labels_in_range,
    count_mask_classes,
    detect_mask_columns,
    with_segmentation_transform,
)
from .shapes_segmentation import load_shapes_segmentation

__all__ = [
    "ImageClassificationTransform",
    "SegmentationTransform",
    "check_mask_labels_in_range",
    "count_mask_classes",
    "detect_mask_columns",
    "load_shapes_segmentation",
    "with_segmentation_transform",
    "build_image_transform",
    "check_labels_in_range",
    "count_classes",
    "detect_columns",
    "load_digits_dataset",
    "load_fine_grained_dataset",
    "load_image_dataset",
    "pick_split",
    "with_image_transform",
]

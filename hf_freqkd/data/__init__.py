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
from .detection import (
    DetectionTransform,
    check_detection_rows,
    count_detection_classes,
    detect_detection_columns,
    detection_collator,
    with_detection_transform,
)
from .segmentation import (
    SegmentationTransform,
    check_mask_labels_in_range,
    count_mask_classes,
    detect_mask_columns,
    with_segmentation_transform,
)
from .shapes_detection import load_shapes_detection
from .shapes_segmentation import load_shapes_segmentation

__all__ = [
    "DetectionTransform",
    "check_detection_rows",
    "count_detection_classes",
    "detect_detection_columns",
    "detection_collator",
    "load_shapes_detection",
    "with_detection_transform",
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

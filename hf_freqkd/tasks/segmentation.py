"""Semantic segmentation: a class id per pixel, logits (B, K, H, W) at the input size, mIoU.

Labels are (H, W) masks with -100 where a pixel carries no label (see hf_freqkd.data.segmentation);
evaluation keeps the predicted class per pixel rather than K scores per pixel.
"""

from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from ..errors import ConfigError
from .base import Task, TaskData, register_task


def _class_per_pixel(logits, labels=None):
    from ..metrics import segmentation_predictions

    return segmentation_predictions(logits, labels)


@register_task
class SegmentationTask(Task):
    name = "segmentation"
    pipeline_tag = "image-segmentation"
    model_kind = "a segmentation network (a class per pixel)"
    card_title = "Segmentation network"
    card_metrics = {
        "mean_iou": ("mean_iou", "Mean IoU"),
        "pixel_accuracy": ("pixel_accuracy", "Pixel accuracy"),
        "mean_accuracy": ("mean_accuracy", "Mean class accuracy"),
    }
    benchmark_metrics = (("mean_iou", "mIoU"), ("pixel_accuracy", "pixel accuracy"))
    label_dims = 2
    label_hint = "set task: segmentation in the config (image + mask columns)"
    example_model = "segfpn_resnet18 (hf_freqkd.models.segmentation)"
    preprocess_logits_for_metrics = staticmethod(_class_per_pixel)
    transformers_auto_class = "AutoModelForSemanticSegmentation"
    remote_code_classes = ("AutoModelForSemanticSegmentation", "HfFreqKDSemanticSegmenter")
    pipeline_output = "[{'label': 'circle', 'mask': <PIL image>, 'score': None}, ...]: a mask per class present"
    squashes_images = True  # hf_freqkd.data.segmentation resizes image and mask to the input size
    data_arguments = ("mask_column", "reduce_labels")

    def check_data_arguments(self, data_args) -> None:
        if data_args.label_column is not None:
            raise ConfigError(f"label_column = {data_args.label_column!r} is set with task: {self.name}; name the mask column with mask_column")

    def class_names(self, dataset) -> list[str] | None:
        # Masks hold class ids with no names; the generated set's are given by the run (hf_freqkd.run).
        return None

    def matches(self, model: nn.Module) -> bool:
        from ..models.segmentation import is_segmentation_model

        return is_segmentation_model(model)

    def data_functions(self, train_data, data_args, num_classes: int | None = None) -> TaskData:
        from ..data.segmentation import segmentation_data_functions

        # label_column is the mask column; transform and check are the per-pixel ones.
        return TaskData(*segmentation_data_functions(train_data, data_args, num_classes))

    def compute_metrics(self, num_classes: int, args) -> Callable:
        from ..metrics import SEGMENTATION_IGNORE_LABEL, compute_segmentation_metrics
        from ..metrics.batched import BatchedMetrics, SegmentationConfusion

        return BatchedMetrics(
            functools.partial(compute_segmentation_metrics, num_classes=num_classes),
            lambda: SegmentationConfusion(num_classes, SEGMENTATION_IGNORE_LABEL),
        )

"""Image classification: one class id per image, logits (B, K), top-1 / top-k accuracy."""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

from torch import nn

from .base import Task, TaskData, register_task


@register_task
class ClassificationTask(Task):
    name = "classification"
    pipeline_tag = "image-classification"
    model_kind = "an image classifier"
    card_title = "Image classifier"
    card_metrics = {"accuracy": ("accuracy", "Top-1 accuracy")}
    label_dims = 0
    label_hint = "use a segmentation network, e.g. segfpn_resnet18 (see hf_freqkd.models.segmentation)"
    example_model = "resnet18"
    transformers_auto_class = "AutoModelForImageClassification"
    transformers_loads_timm_exports = True
    remote_code_classes = ("AutoModelForImageClassification", "HfFreqKDImageClassifier")
    benchmark_metrics = (("accuracy", "top-1"), ("top5_accuracy", "top-5"))

    def matches(self, model: nn.Module) -> bool:
        # The fallback task: every network that declares no other task is a classifier.
        from . import available_tasks

        return not any(task.matches(model) for task in available_tasks().values() if task.name != self.name)

    def data_functions(self, train_data, data_args, num_classes: int | None = None) -> TaskData:
        from ..data.loading import check_labels_in_range, count_classes, detect_columns, with_image_transform

        image_column, label_column = detect_columns(train_data, data_args.image_column, data_args.label_column)
        num_classes = num_classes or count_classes(train_data, label_column)
        return TaskData(image_column, label_column, num_classes, with_image_transform, check_labels_in_range)

    def compute_metrics(self, num_classes: int, args) -> Callable:
        from ..metrics import compute_classification_metrics
        from ..metrics.batched import BatchedMetrics, ClassificationHits

        top_k = getattr(args, "eval_top_k", 5)
        return BatchedMetrics(functools.partial(compute_classification_metrics, top_k=top_k), lambda: ClassificationHits(top_k))

    def card_metric_names(self, metrics: dict[str, Any]) -> dict[str, tuple[str, str]]:
        names = super().card_metric_names(metrics)
        for key in metrics:
            if key.startswith("eval_top") and key.endswith("_accuracy"):
                k = key[len("eval_top") : -len("_accuracy")]
                names[key] = (f"top_{k}_accuracy", f"Top-{k} accuracy")
        return names

    def benchmark_shows(self, key: str, num_classes: int) -> bool:
        # Top-k accuracy over k classes or fewer is 100 % whatever the model predicts.
        top_k = re.fullmatch(r"top(\d+)_accuracy", key)
        return top_k is None or num_classes > int(top_k.group(1))

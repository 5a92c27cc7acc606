"""Object detection: boxes and classes per image, the detector's own losses, COCO mAP.

Rows hold ``labels`` of shape ``(M, 5)``: class, x1, y1, x2, y2 in the pixels of the transformed
image (see hf_freqkd.data.detection); the collator pads a batch's rows to one M with class -100.
A detector (hf_freqkd.models.detection) computes its losses from them in its forward, so the
label term (``ce``) is that loss, by part; evaluation scores the padded detections ``(B, N, 6)``
with COCO mAP (a local evaluate module over torchmetrics + pycocotools).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from ..errors import DataError, MethodOptionsError, ModelError
from ..types import LogitsAndFeatures
from .base import Task, TaskData, register_task


@register_task
class DetectionTask(Task):
    name = "detection"
    pipeline_tag = "object-detection"
    model_kind = "an object detector"
    card_title = "Object detector"
    card_metrics = {
        "map": ("map", "COCO mAP (IoU 0.50:0.95)"),
        "map_50": ("map_50", "AP at IoU 0.50"),
        "map_75": ("map_75", "AP at IoU 0.75"),
        "map_small": ("map_small", "AP, small objects"),
        "map_medium": ("map_medium", "AP, medium objects"),
        "map_large": ("map_large", "AP, large objects"),
    }
    benchmark_metrics = (("map", "mAP"), ("map_50", "AP50"))
    undefined_metric_value = -1.0
    label_loss = "its own detection losses"
    card_usage = (
        "# pixel_values: (B, 3, H, W), resized and normalised as model.pretrained_cfg says (input_size, mean, std)\n"
        "output = model(pixel_values)  # a DetectorOutput (hf_freqkd.models.detection)\n"
        "output.detections  # (B, N, 6) rows x1, y1, x2, y2, score, class in input pixels; class -100 pads"
    )
    label_dims = 2
    label_hint = "set task: detection in the config (an image column and an objects column with bbox and category)"
    example_model = "retinanet_resnet18 (hf_freqkd.models.detection)"
    # RT-DETR / D-FINE students (hf_freqkd.models.transformers_detection); hf_freqkd's timm detectors through
    # the modeling code their export carries (hf_freqkd.remote_code).
    transformers_auto_class = "AutoModelForObjectDetection"
    remote_code_classes = ("AutoModelForObjectDetection", "HfFreqKDObjectDetector")
    pipeline_output = "[{'score': 0.91, 'label': 'square', 'box': {'xmin': 3, 'ymin': 5, 'xmax': 20, 'ymax': 19}}, ...]"
    squashes_images = True  # hf_freqkd.data.detection resizes image and boxes to the input size
    data_arguments = ("bbox_format",)

    def check_data_arguments(self, data_args) -> None:
        from ..data.detection import check_bbox_format

        check_bbox_format(data_args.bbox_format)

    def class_names(self, dataset) -> list[str] | None:
        from ..data.detection import detection_class_names

        return detection_class_names(dataset)

    def matches(self, model: nn.Module) -> bool:
        from ..models.detection import is_detection_model

        return is_detection_model(model)

    def check_models(self, student: nn.Module, teacher: nn.Module | None) -> None:
        super().check_models(student, teacher)
        if teacher is None:
            return
        from ..models.loading import is_transformers_model, model_architecture

        if is_transformers_model(student) != is_transformers_model(teacher):
            # A transformers detector's pyramid (its hybrid encoder's levels) is not a timm detector's FPN
            # (other levels, widths and training): the pair is not distilled level by level.
            def describe(model):
                library = "transformers" if is_transformers_model(model) else "timm"
                return f"a {library} detector ({model_architecture(model)})"

            raise ModelError(
                f"the student is {describe(student)} but the teacher is {describe(teacher)}: detection distillation "
                "pairs detectors of one library; use an RT-DETR / D-FINE teacher (transformers) for a transformers "
                "student, a timm detector teacher for a timm student"
            )
        # Feature methods pair FPN levels by name: both pyramids must have the same levels.
        student_levels = [(info["module"], info["reduction"]) for info in student.feature_info]
        teacher_levels = [(info["module"], info["reduction"]) for info in teacher.feature_info]
        if student_levels != teacher_levels:
            def describe(levels):
                return ", ".join(f"{name} (stride {stride})" for name, stride in levels)

            raise ModelError(
                f"the FPN levels of the student ({describe(student_levels)}) and the teacher ({describe(teacher_levels)}) "
                "differ: feature distillation pairs the levels of the same stride; choose backbones and out_indices "
                "that give both detectors the same levels"
            )

    def check_methods(self, methods) -> None:
        super().check_methods(methods)
        if any(method.name == "ce" and getattr(method.options, "label_smoothing", 0) for method in methods):
            raise MethodOptionsError(
                "label smoothing (label_smoothing_factor, methods.ce.label_smoothing) applies to cross-entropy: a "
                "detector's label term is its own loss; unset it"
            )

    def check_training_rows(self, dataset) -> None:
        labels = self.first_training_labels(dataset)
        if labels is None:
            return
        if labels.dim() != 2 or labels.shape[-1] != 5:
            raise DataError(
                f"the student is {self.model_kind} but the first training row holds labels of shape {tuple(labels.shape)}, "
                f"not (boxes, 5) rows of class, x1, y1, x2, y2: {self.label_hint}"
            )

    def data_functions(self, train_data, data_args, num_classes: int | None = None) -> TaskData:
        from ..data.detection import detection_data_functions

        return TaskData(*detection_data_functions(train_data, data_args, num_classes))

    @property
    def data_collator(self) -> Callable:
        from ..data.detection import detection_collator

        return detection_collator

    def random_labels(self, batch: int, image_size: int, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Three random boxes per image, 1/8 to 1/2 of the side, as padded rows (class, x1, y1, x2, y2)."""
        objects = 3
        sides = image_size * (0.125 + 0.375 * torch.rand(batch, objects, 2, generator=generator))
        corners = (image_size - sides) * torch.rand(batch, objects, 2, generator=generator)
        classes = torch.randint(0, num_classes, (batch, objects, 1), generator=generator).float()
        return torch.cat([classes, corners, corners + sides], dim=-1)

    def eval_loss(self, student: LogitsAndFeatures, labels: torch.Tensor) -> torch.Tensor:
        """The detector's own loss on the evaluation batch (the sum of its parts)."""
        return torch.stack([value.float() for value in student.losses.values()]).sum()

    def compute_metrics(self, num_classes: int, args) -> Callable:
        from ..metrics import compute_detection_metrics
        from ..metrics.batched import BatchedMetrics, DetectionRows

        return BatchedMetrics(functools.partial(compute_detection_metrics, num_classes=num_classes), lambda: DetectionRows(num_classes))

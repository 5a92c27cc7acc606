"""``feature_mse``: spatial feature imitation, the baseline the frequency methods are compared with.

Each paired student map goes through a 1x1 convolution to the teacher's width (resized to the
teacher's grid first when the sizes differ) and is pulled towards the teacher map by a mean squared
error over every position and channel, summed over the pairs:

    loss_feature_mse = sum_pairs mean((adapter(s) - t)^2)

This is FitNets' hint loss on every stage, and on detectors the plain FPN-imitation baseline of the
detection-distillation papers (FreeKD compares against it): the same levels as ``freekd`` or
``fam``, with no frequency decomposition, mask or attention. By default every stage layer is paired
(for a detector, every FPN level).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..models.pairing import check_paired_maps, pair_layers
from ..types import BackboneInfo, FeatureRequest, LogitsAndFeatures
from .base import DistillationMethod, MethodOptions, in_dtype_of, require
from .registry import register_method


@dataclass
class FeatureMSEOptions(MethodOptions):
    student_layers: Optional[list[str]] = field(
        default=None, metadata={"help": "Student layers, paired in order with teacher_layers. Default: every stage (every FPN level)."}
    )
    teacher_layers: Optional[list[str]] = field(
        default=None, metadata={"help": "Teacher layers imitated (module names). Default: every stage (every FPN level)."}
    )
    #: what ``hf-freqkd tune`` varies by default (syntax: hf_freqkd/tune/space.py)
    search_space: ClassVar[dict[str, Any]] = {"weight": {"low": 0.1, "high": 10.0, "log": True}}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.student_layers and self.teacher_layers:
            require(
                len(self.student_layers) == len(self.teacher_layers),
                "student_layers",
                self.student_layers,
                f"as many layers as teacher_layers ({len(self.teacher_layers)})",
            )


@register_method
class FeatureMSE(DistillationMethod):
    name = "feature_mse"
    description = "Feature imitation baseline: MSE of 1x1-adapted student maps to the teacher's (every stage)."
    options_class = FeatureMSEOptions
    tasks = ("classification", "segmentation", "detection")
    reads_teacher_logits = False

    def __init__(self, options: FeatureMSEOptions | None = None):
        super().__init__(options)
        self.pairs: list[tuple[str, str]] = []

    def feature_request(self, student: BackboneInfo, teacher: BackboneInfo | None) -> FeatureRequest:
        self.pairs = pair_layers(student, teacher, self.options.student_layers, self.options.teacher_layers, method=self.name)
        return FeatureRequest(student=tuple(s for s, _ in self.pairs), teacher=tuple(t for _, t in self.pairs))

    def build(self, student_shapes, teacher_shapes, num_classes: int) -> None:
        check_paired_maps(self.name, self.pairs, student_shapes, teacher_shapes)
        self.adapters = nn.ModuleList(nn.Conv2d(student_shapes[s][1], teacher_shapes[t][1], kernel_size=1) for s, t in self.pairs)

    def forward(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = []
        for adapter, (student_layer, teacher_layer) in zip(self.adapters, self.pairs):
            student_map, teacher_map = student.features[student_layer], teacher.features[teacher_layer].detach()
            if student_map.shape[-2:] != teacher_map.shape[-2:]:
                student_map = F.interpolate(student_map.float(), size=teacher_map.shape[-2:], mode="bilinear", align_corners=False)
            adapted = adapter(in_dtype_of(student_map, adapter))
            terms.append(F.mse_loss(adapted.float(), teacher_map.float()))
        return {"loss_feature_mse": torch.stack(terms).sum()}

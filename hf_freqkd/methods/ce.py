"""``ce``: cross-entropy with the ground-truth labels - the student trained alone.

Every run contains this term (weight 1 unless configured); a config listing only ``ce`` trains the
student from scratch, with no teacher loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..types import LogitsAndFeatures
from .base import DistillationMethod, MethodOptions, require
from .registry import register_method


@dataclass
class CEOptions(MethodOptions):
    label_smoothing: float = field(
        default=0.0, metadata={"help": "Label smoothing of the ground-truth target, in [0, 1)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", self.label_smoothing, "a number in [0, 1)")


@register_method
class CrossEntropy(DistillationMethod):
    name = "ce"
    description = "The label term: cross-entropy, or a detector's own loss; the student alone; in every run."
    options_class = CEOptions
    uses_teacher = False
    warms_up = False
    # cross_entropy takes (B, K, H, W) logits with (B, H, W) labels and skips the -100 (ignored) pixels;
    # a detector's label term is its own loss, computed in its forward.
    tasks = ("classification", "segmentation", "detection")

    def forward(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if student.losses is not None:
            # The detector's losses by part (loss_classification, loss_box_regression, ...), each logged.
            return {f"loss_{name}": value for name, value in student.losses.items()}
        loss = F.cross_entropy(student.logits.float(), labels, label_smoothing=self.options.label_smoothing)
        return {"loss_ce": loss}

"""``kd``: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

loss_kd = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch. The T^2 factor
keeps the gradient scale independent of T. The common CIFAR recipe is ``ce: {weight: 0.1}``,
``kd: {weight: 0.9, temperature: 4}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..types import LogitsAndFeatures
from .base import DistillationMethod, MethodOptions, require_temperature
from .registry import register_method


@dataclass
class KDOptions(MethodOptions):
    temperature: float = field(default=4.0, metadata={"help": "Softmax temperature T (> 0)."})
    #: what ``hf-freqkd tune`` varies by default (syntax: hf_freqkd/tune/space.py)
    search_space: ClassVar[dict[str, Any]] = {"weight": {"low": 0.1, "high": 10.0, "log": True}, "temperature": {"low": 1.0, "high": 8.0}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_temperature(self.temperature, "temperature")


def kl_divergence_with_temperature(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, mean over the batch; computed in float32."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # log_target keeps the teacher side exact where its probabilities underflow to 0.
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_method
class KnowledgeDistillation(DistillationMethod):
    name = "kd"
    description = "Hinton KD: KL between temperature-softened teacher and student probabilities (2015)."
    options_class = KDOptions

    def forward(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_kd": kl_divergence_with_temperature(student.logits, teacher.logits, self.options.temperature)}

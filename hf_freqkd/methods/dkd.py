"""``dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

KD splits into a target-class term and a non-target-class term:

    TCKD = T^2 * KL(b_teacher || b_student),  b = [p_target, 1 - p_target]
    NCKD = T^2 * KL(p^_teacher || p^_student), p^ = softmax over the non-target classes only
    KD   = TCKD + (1 - p_target_teacher) * NCKD          (per sample, the paper's identity)

DKD weights them independently: loss = alpha * TCKD + beta * NCKD, with the paper's CIFAR values
alpha 1, beta 8, T 4 and a 20-epoch warm-up (``distill_warmup_epochs: 20``). The strongest
published logit baseline FiGKD is compared with. Probabilities are formed in log space so logits
of any size stay finite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..types import LogitsAndFeatures
from .base import DistillationMethod, MethodOptions, require, require_temperature, require_weight
from .registry import register_method


@dataclass
class DKDOptions(MethodOptions):
    alpha: float = field(default=1.0, metadata={"help": "Weight of the target-class term TCKD (>= 0)."})
    beta: float = field(default=8.0, metadata={"help": "Weight of the non-target-class term NCKD (>= 0)."})
    temperature: float = field(default=4.0, metadata={"help": "Softmax temperature T (> 0)."})
    #: what ``hf-freqkd tune`` varies by default (syntax: hf_freqkd/tune/space.py); alpha stays the paper's 1
    search_space: ClassVar[dict[str, Any]] = {"beta": {"low": 1.0, "high": 16.0, "log": True}, "temperature": {"low": 1.0, "high": 8.0}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_weight(self.alpha, "alpha")
        require_weight(self.beta, "beta")
        require_temperature(self.temperature, "temperature")


def _kl_from_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities; exact where p underflows to 0."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def decoupled_kd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD), each including the T^2 factor. Computed in float32."""
    student_logits, teacher_logits = student_logits.float() / temperature, teacher_logits.float() / temperature
    target = F.one_hot(labels, student_logits.shape[-1]).bool()
    rows, classes = student_logits.shape

    def binary_and_others(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = logits.log_softmax(dim=-1)
        log_target = log_probs[target]
        others = logits[~target].view(rows, classes - 1)
        # log(1 - p_target) as a log-sum-exp over the other classes: no cancellation near p = 1.
        log_rest = log_probs[~target].view(rows, classes - 1).logsumexp(dim=-1)
        return torch.stack([log_target, log_rest], dim=-1), others.log_softmax(dim=-1)

    student_binary, student_others = binary_and_others(student_logits)
    teacher_binary, teacher_others = binary_and_others(teacher_logits)
    scale = temperature**2
    tckd = _kl_from_log_probs(teacher_binary, student_binary) * scale
    nckd = _kl_from_log_probs(teacher_others, student_others) * scale
    return tckd, nckd


@register_method
class DKD(DistillationMethod):
    name = "dkd"
    description = "Decoupled KD: target-class and non-target-class KL weighted apart (CVPR 2022)."
    options_class = DKDOptions

    def build(self, student_shapes, teacher_shapes, num_classes: int) -> None:
        require(num_classes >= 2, "num_classes", num_classes, "at least 2 classes for a target / non-target split")

    def forward(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        tckd, nckd = decoupled_kd_terms(student.logits, teacher.logits.detach(), labels, self.options.temperature)
        return {"loss_tckd": self.options.alpha * tckd.mean(), "loss_nckd": self.options.beta * nckd.mean()}

"""The model the Trainer sees: the student plus the trainable parts of the methods.

The teacher is deliberately *not* a submodule. Everything that is a submodule here - the student
and every method's adapters or filters - is what the Trainer optimises, what data-parallel
training synchronises and what checkpoints hold; the teacher therefore never lands in any of them.
All trainable computation (student forward and every loss term) runs inside ``forward``, so a
DDP wrapper around the Distiller sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .errors import MethodOptionsError
from .methods.base import DistillationMethod
from .models.features import FeatureExtractor
from .tasks import Task
from .types import LogitsAndFeatures


@dataclass
class DistillerOutput(ModelOutput):
    """``loss`` (weighted sum), student ``logits`` and each weighted term in ``loss_terms``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None


class Distiller(nn.Module):
    """Student + methods. ``forward`` returns the weighted training loss, or the task's plain
    evaluation loss (cross-entropy) at evaluation.

    Built by :func:`hf_freqkd.factory.build_distillation`, after the probe pass that gives the
    methods the shapes of their features.
    """

    #: the input the Trainer reads for ``include_for_metrics: [inputs]`` (transformers' vision models' name)
    main_input_name = "pixel_values"

    def __init__(self, student: FeatureExtractor, methods: list[DistillationMethod], task: Task):
        super().__init__()
        self.student = student
        self.methods = nn.ModuleDict({method.name: method for method in methods})
        #: what evaluation reports as the loss (``task.eval_loss``); not a module, holds no weights
        self.task = task

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
        teacher_features: dict[str, torch.Tensor] | None = None,
        warmup_factor: float = 1.0,
    ) -> DistillerOutput:
        student = self.student(pixel_values, labels)
        if labels is None:
            return DistillerOutput(logits=student.logits)
        has_teacher = teacher_logits is not None or bool(teacher_features)
        if not has_teacher and not self.training:
            # Evaluation reports the student's plain task loss, not the mixed training loss.
            loss = self.task.eval_loss(student, labels)
            return DistillerOutput(loss=loss, logits=student.logits)
        # A detector teacher read for its features only has no logits (FeatureExtractor.predictions).
        teacher = LogitsAndFeatures(teacher_logits, teacher_features or {}) if has_teacher else None
        terms: dict[str, torch.Tensor] = {}
        for method in self.methods.values():
            scale = method.weight * (warmup_factor if method.warms_up else 1.0)
            for name, value in method(student, teacher, labels).items():
                if name in terms:
                    raise MethodOptionsError(f"two methods return a loss term named '{name}': rename one method's term")
                terms[name] = value * scale
        loss = torch.stack([value.float() for value in terms.values()]).sum()
        return DistillerOutput(loss=loss, logits=student.logits, loss_terms=terms)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1, offload: bool = False) -> None:
        """Checkpoint the student's blocks: what the Trainer calls for ``gradient_checkpointing`` /
        ``activation_checkpointing`` (:mod:`hf_freqkd.models.activation_checkpointing`). The teacher is
        not a submodule and is never checkpointed; the methods' modules are small and are not either."""
        from .models.activation_checkpointing import enable_activation_checkpointing

        enable_activation_checkpointing(self.student.model, activation_checkpointing_kwargs, every_n_layers, offload)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        """transformers 4's name of :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        from .models.activation_checkpointing import disable_activation_checkpointing

        disable_activation_checkpointing(self.student.model)

    gradient_checkpointing_disable = activation_checkpointing_disable

    @property
    def _no_split_modules(self) -> list[str]:
        """The blocks, by class name, that FSDP's transformer-based auto wrap (``fsdp_auto_wrap_policy:
        TRANSFORMER_BASED_WRAP``) shards one by one, so that a process gathers one block's weights at a
        time: the student's (transformers students name theirs; for timm students, the classes of the
        stage modules of ``feature_info``: a ViT's blocks, a ConvNeXt's stages) and the methods' per-layer
        modules (FAM's stages, whose frequency filters can outweigh the student)."""
        names = self.student.block_classes()
        for method in self.methods.values():
            for child in method.children():
                if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                    # A method's own classes only: torch layers (its 1x1 adapters) would match the student's too.
                    names += [type(layer).__name__ for layer in child.children() if not type(layer).__module__.startswith("torch.")]
        return list(dict.fromkeys(names))

    @property
    def leaves_parameters_unused(self) -> bool:
        """True when a training step may leave some trainable parameter without a gradient: some
        method declares it (:attr:`~hf_freqkd.methods.DistillationMethod.leaves_parameters_unused`).
        The student and the shipped methods use every parameter in every step, so DDP is told not
        to search for unused ones (``DistillationTrainer`` sets ``ddp_find_unused_parameters``)."""
        return any(method.leaves_parameters_unused for method in self.methods.values())

    def trainable_method_parameters(self) -> int:
        """Number of trainable parameters the methods add to the student."""
        return sum(p.numel() for p in self.methods.parameters() if p.requires_grad)

"""``DistillationTrainer``: ``transformers.Trainer`` with a frozen teacher and pluggable loss methods.

It overrides as little as it can: construction (teacher, feature requests, method modules),
``compute_loss`` (one teacher no-grad pass + the Distiller's forward) and ``log`` (each loss term
as its own scalar). Optimisation, mixed precision, gradient accumulation, data-parallel wrapping,
checkpointing and resuming stay the Trainer's.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import os
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.data.data_collator import default_data_collator

from .config import DistillationConfig
from .distiller import Distiller, DistillerOutput
from .methods.base import DistillationMethod
from .methods.registry import build_methods
from .metrics import compute_classification_metrics
from .models.features import BackboneInfo, FeatureExtractor, FrozenTeacher
from .models.loading import load_model, model_num_classes, resolve_input_config

logger = logging.getLogger(__name__)


class DistillationTrainer(Trainer):
    """Train ``model`` (the student) to imitate ``teacher`` with the methods in ``args.methods``.

    Args:
        model (`nn.Module` or `str`): the student: a timm or transformers classifier, or a source
            string for :func:`hf_freqkd.models.load_model`.
        teacher (`nn.Module` or `str`, *optional*): the teacher; defaults to ``args.teacher_model``.
            Not needed when every method is label-only (``ce``).
        args (`DistillationConfig`): training arguments and distillation settings.
        train_dataset / eval_dataset: datasets yielding ``pixel_values`` and ``labels`` (see
            :func:`hf_freqkd.data.with_image_transform`).
        compute_metrics: defaults to top-1 and top-k accuracy through the bundled ``evaluate`` module.
        Every other argument is passed to ``transformers.Trainer``.
    """

    def __init__(
        self,
        model: nn.Module | str | None = None,
        teacher: nn.Module | str | None = None,
        args: DistillationConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        data_collator=None,
        compute_metrics=None,
        **kwargs: Any,
    ):
        if args is None:
            args = DistillationConfig(output_dir="trainer_output")
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be a DistillationConfig, got {type(args).__name__}")
        if model is None:
            raise ValueError("DistillationTrainer needs a student: pass model=<nn.Module or model name>")
        student = load_model(model) if isinstance(model, str) else model
        if isinstance(student, Distiller):
            raise TypeError("pass the student network itself, not a Distiller")
        methods = build_methods(args.methods)
        num_classes = model_num_classes(student)
        teacher_model = self._load_teacher(teacher, args, methods, num_classes)
        if teacher_model is not None and model_num_classes(teacher_model) != num_classes:
            raise ValueError(
                f"teacher has {model_num_classes(teacher_model)} classes but the student has {num_classes}: "
                "both must predict the same label set"
            )
        student_info = BackboneInfo.of(student)
        teacher_info = BackboneInfo.of(teacher_model) if teacher_model is not None else None
        requests = [m.feature_request(student_info, teacher_info) for m in methods]
        student_layers = [name for request in requests for name in request.student]
        teacher_layers = [name for request in requests for name in request.teacher]
        student_extractor = FeatureExtractor(student, student_layers)
        teacher_extractor = FrozenTeacher(teacher_model, teacher_layers) if teacher_model is not None else None
        sample = self._probe_input(student, train_dataset)
        student_shapes, teacher_shapes = self._probe_shapes(sample, student_extractor, teacher_extractor)
        for method in methods:
            method.build(student_shapes, teacher_shapes, num_classes)
        distiller = Distiller(student_extractor, methods)

        super().__init__(
            model=distiller,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator or default_data_collator,
            compute_metrics=compute_metrics or functools.partial(compute_classification_metrics, top_k=args.eval_top_k),
            **kwargs,
        )
        # Every term is a per-batch mean: the Trainer divides by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        # Inference-only preparation: device placement and mixed precision, no DDP wrapper.
        self.teacher = (
            self.accelerator.prepare_model(teacher_extractor, evaluation_mode=True) if teacher_extractor is not None else None
        )
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_counts: dict[str, int] = {}
        self._updates_per_epoch: int | None = None
        logger.info(
            "student %s: %.3f M parameters; methods %s add %d trainable parameters",
            type(student).__name__,
            sum(p.numel() for p in student.parameters()) / 1e6,
            ", ".join(self.model.methods),
            distiller.trainable_method_parameters(),
        )

    # ------------------------------------------------------------------------------------------
    # Construction helpers

    @staticmethod
    def _load_teacher(
        teacher, args: DistillationConfig, methods: list[DistillationMethod], num_classes: int
    ) -> nn.Module | None:
        needing = [m.name for m in methods if m.uses_teacher]
        if not needing:
            return None
        teacher = teacher if teacher is not None else args.teacher_model
        if teacher is None:
            raise ValueError(f"method(s) {', '.join(needing)} need a teacher: set teacher_model in the config or pass teacher=")
        if isinstance(teacher, str):
            # An architecture name builds a head for the student's classes (its checkpoint must fit);
            # saved folders and pretrained weights keep their own head, checked against the student.
            builds_head = not (os.path.isdir(teacher) or args.teacher_pretrained)
            teacher = load_model(
                teacher,
                num_classes=num_classes if builds_head else None,
                checkpoint=args.teacher_checkpoint,
                pretrained=args.teacher_pretrained,
                model_kwargs=args.teacher_model_kwargs,
                trust_remote_code=args.trust_remote_code,
            )
        return teacher

    @staticmethod
    def _probe_input(student: nn.Module, train_dataset) -> torch.Tensor:
        """One real input (the first training row) or, without data, a zero image of the model's size."""
        if train_dataset is not None and hasattr(train_dataset, "__getitem__") and len(train_dataset) > 0:
            row = train_dataset[0]
            if "pixel_values" not in row:
                raise ValueError(
                    f"training rows must hold 'pixel_values' (and 'labels'); got {', '.join(row)}. "
                    "Format the dataset with hf_freqkd.data.with_image_transform."
                )
            return torch.as_tensor(row["pixel_values"]).unsqueeze(0)
        return torch.zeros(1, *resolve_input_config(student)["input_size"])

    @staticmethod
    def _probe_shapes(sample, student: FeatureExtractor, teacher: FrozenTeacher | None):
        """Run both networks once (eval mode, no grad) to check the input fits and read feature shapes."""
        shapes = []
        for role, extractor in (("student", student), ("teacher", teacher)):
            if extractor is None:
                shapes.append({})
                continue
            was_training = extractor.training
            extractor.eval()
            device = next(extractor.parameters()).device
            try:
                with torch.no_grad():
                    output = extractor(sample.to(device))
            except Exception as error:  # noqa: BLE001 - report which model and input failed
                raise ValueError(
                    f"the {role} ({type(extractor.model).__name__}) cannot take inputs of shape {tuple(sample.shape[1:])}: "
                    f"{error}. Set image_size to a size the model accepts."
                ) from None
            finally:
                extractor.train(was_training)
            shapes.append({name: value.shape for name, value in output.features.items()})
        return shapes[0], shapes[1]

    # ------------------------------------------------------------------------------------------
    # Training

    def distill_warmup_factor(self) -> float:
        """``min(step / warmup_steps, 1)`` for the optimizer step being computed (first step = 1)."""
        steps = float(self.args.distill_warmup_steps)
        if self.args.distill_warmup_epochs:
            steps = self.args.distill_warmup_epochs * self._count_updates_per_epoch()
        if steps <= 0:
            return 1.0
        return min((self.state.global_step + 1) / steps, 1.0)

    def _count_updates_per_epoch(self) -> int:
        if self._updates_per_epoch is None:
            rows_per_process = math.ceil(len(self.train_dataset) / self.args.world_size)
            batch = self.args.per_device_train_batch_size
            batches = rows_per_process // batch if self.args.dataloader_drop_last else math.ceil(rows_per_process / batch)
            self._updates_per_epoch = max(batches // self.args.gradient_accumulation_steps, 1)
        return self._updates_per_epoch

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if not self.args.lr_decay_epochs:
            return super().create_scheduler(num_training_steps, optimizer)
        # The CIFAR distillation recipes decay the rate in steps at fixed epochs; transformers has no such schedule.
        updates_per_epoch = self._count_updates_per_epoch()
        milestones = [round(epoch * updates_per_epoch) for epoch in self.args.lr_decay_epochs]
        rate = self.args.lr_decay_rate
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer if optimizer is not None else self.optimizer,
            lambda step: rate ** bisect.bisect_right(milestones, step),
        )
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values = inputs["pixel_values"]
        labels = inputs.get("labels")
        if model.training and labels is not None:
            teacher_logits = teacher_features = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_output = self.teacher(pixel_values)
                teacher_logits, teacher_features = teacher_output.logits, teacher_output.features
            outputs = model(
                pixel_values=pixel_values,
                labels=labels,
                teacher_logits=teacher_logits,
                teacher_features=teacher_features,
                warmup_factor=self.distill_warmup_factor(),
            )
            self._record_terms(outputs.loss_terms)
        else:
            outputs = model(pixel_values=pixel_values, labels=labels)
        loss = outputs.loss
        # Only loss and logits go back: the Trainer's prediction loop treats other fields as logits.
        return (loss, DistillerOutput(loss=loss, logits=outputs.logits)) if return_outputs else loss

    def _record_terms(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self._term_sums[name] = self._term_sums.get(name, torch.zeros((), device=value.device)) + value
            self._term_counts[name] = self._term_counts.get(name, 0) + 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs (they carry "loss") also get the mean of each weighted term since the last log.
        if "loss" in logs and self._term_sums:
            for name, total in self._term_sums.items():
                mean = self.accelerator.reduce(total / self._term_counts[name], reduction="mean")
                logs[name] = round(float(mean), 6)
            self._term_sums, self._term_counts = {}, {}
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------
    # Data

    def _remove_unused_columns(self, dataset, description: str | None = None):
        # A dataset with a transform (with_image_transform) already yields exactly the model's inputs
        # from its raw columns; removing "unused" raw columns would starve the transform.
        if getattr(dataset, "format", {}).get("type") == "custom":
            return dataset
        return super()._remove_unused_columns(dataset, description)

    @property
    def student(self) -> nn.Module:
        """The student network (unwrapped)."""
        return self.accelerator.unwrap_model(self.model).student.model

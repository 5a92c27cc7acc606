"""One way to build a distillation: student, frozen teacher and methods, ready to train.

:func:`build_distillation` is the only place that builds a :class:`~hf_freqkd.distiller.Distiller`.
``DistillationTrainer``, the speed benchmarks (``hf-freqkd benchmark speed`` and
``benchmarks/*.py``) and FreeKD's prompt fitting (its teacher) all go through it, so they time,
train and check exactly the same modules::

    parts = build_distillation(student, teacher, {"kd": {"temperature": 4.0}}, sample_input=images[:1])
    teacher_output = parts.teacher(images)
    loss = parts.distiller(images, labels, teacher_output.logits, teacher_output.features).loss

The steps, in order: build the methods from their specs; check the pair (same classes, finite
weights, same task, methods that apply to it, training rows of the task's layout); ask each method
which features it needs; wrap the student in a :class:`~hf_freqkd.models.FeatureExtractor` and the
teacher in a :class:`~hf_freqkd.models.FrozenTeacher`; run both once on ``sample_input`` (eval
mode, no gradients) to check the input fits and read the feature shapes; let each method create its
trainable modules from those shapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .distiller import Distiller
from .errors import ConfigError, DataError, ModelError
from .methods.base import DistillationMethod
from .methods.registry import build_methods
from .models.features import FeatureExtractor, FrozenTeacher, backbone_info
from .models.loading import load_model, model_num_classes, resolve_input_config
from .tasks import Task, get_task, task_for_model


@dataclass
class DistillationParts:
    """A distillation, built: what trains and what only runs.

    ``distiller`` is the one trainable module (student + the methods' modules): the Trainer optimises,
    checkpoints and data-parallel-wraps it. ``teacher`` is frozen and never a submodule of it (None
    when every method is label-only). ``task`` says how to evaluate and what applies.
    """

    distiller: Distiller
    teacher: FrozenTeacher | None
    task: Task
    num_classes: int

    @property
    def student(self) -> nn.Module:
        """The bare student network."""
        return self.distiller.student.model

    @property
    def methods(self) -> list[DistillationMethod]:
        return list(self.distiller.methods.values())


def build_distillation(
    student: nn.Module | str,
    teacher: nn.Module | str | None,
    methods: dict[str, Any] | list[DistillationMethod],
    sample_input: torch.Tensor | None = None,
    *,
    train_dataset=None,
    args=None,
    task: Task | str | None = None,
) -> DistillationParts:
    """Build student feature extractor, frozen teacher and methods, after one probe pass.

    Args:
        student: a timm or transformers classifier, a segmentation network, or a source string for
            :func:`hf_freqkd.models.load_model`.
        teacher: the teacher network or a source string; None takes ``args.teacher_model``. Ignored
            (and may be None) when every method is label-only (``ce``).
        methods: method specs ``{name: options}`` (``ce`` added as :func:`~hf_freqkd.methods.build_methods`
            does) or already built methods.
        sample_input: a batch of inputs for the probe pass; by default the first training row, else a
            zero image of the student's input size.
        train_dataset: formatted training rows; the first one must carry labels of the task's layout.
        args: a :class:`~hf_freqkd.config.DistillationConfig`: how a teacher given by name is loaded
            (``teacher_checkpoint``, ``teacher_pretrained``, ``teacher_model_kwargs``, ``trust_remote_code``).
        task: the task (a :class:`~hf_freqkd.tasks.Task` or its registered name, e.g. a config's
            ``task:``); by default the task the student solves (:func:`~hf_freqkd.tasks.task_for_model`).
            A task chosen by name must accept the student: its ``matches`` or, for tasks chosen only by
            name, the task the student solves must be the one it extends.

    Raises a :class:`~hf_freqkd.errors.BadInputError` subclass naming what does not fit. The teacher
    is frozen in place (``requires_grad`` off) once the checks of the pair have passed.
    """
    student_source = student if isinstance(student, str) else "the student module"
    student = as_distillable(load_model(student) if isinstance(student, str) else student)
    if isinstance(student, Distiller):
        raise ModelError("pass the student network itself, not a Distiller")
    methods = list(methods) if isinstance(methods, (list, tuple)) else build_methods(methods)
    num_classes = model_num_classes(student)
    teacher_source = teacher if isinstance(teacher, str) else getattr(args, "teacher_model", None)
    teacher = load_teacher(teacher, args, methods, num_classes)
    teacher = as_distillable(teacher) if teacher is not None else None
    if teacher is not None and model_num_classes(teacher) != num_classes:
        raise ModelError(
            f"teacher has {model_num_classes(teacher)} classes but the student has {num_classes}: "
            "both must predict the same label set; use a teacher trained on this dataset (hf-freqkd train-teacher), "
            "or set num_classes if the dataset's class count is wrong"
        )
    check_finite_weights(student, "student", student_source)
    if teacher is not None:
        check_finite_weights(teacher, "teacher", getattr(args, "teacher_checkpoint", None) or teacher_source or "the teacher module")
    task = resolve_task(task, student)
    task.check_models(student, teacher)
    task.check_methods(methods)
    if not hasattr(train_dataset, "__len__"):
        # A stream (datasets.IterableDataset) is not read ahead to look at its first row: its labels are checked as rows arrive.
        train_dataset = None
    task.check_training_rows(train_dataset)

    student_info = backbone_info(student)
    teacher_info = backbone_info(teacher) if teacher is not None else None
    requests = [method.feature_request(student_info, teacher_info) for method in methods]
    student_extractor = FeatureExtractor(student, [name for request in requests for name in request.student])
    teacher_extractor = None
    if teacher is not None:
        predictions = any(method.uses_teacher and method.reads_teacher_logits for method in methods)
        teacher_extractor = FrozenTeacher(teacher, [name for request in requests for name in request.teacher], predictions=predictions)
    if sample_input is None:
        sample_input = probe_input(student, train_dataset)
    try:
        student_shapes = probe_feature_shapes(sample_input, student_extractor, "student")
        teacher_shapes = probe_feature_shapes(sample_input, teacher_extractor, "teacher") if teacher_extractor is not None else {}
    except ModelError:
        # Give the caller's networks back without the feature hooks of a distillation that failed to build.
        for extractor in (student_extractor, teacher_extractor):
            if extractor is not None:
                extractor.remove_hooks()
        raise
    for method in methods:
        method.build(student_shapes, teacher_shapes, num_classes)
    return DistillationParts(Distiller(student_extractor, methods, task), teacher_extractor, task, num_classes)


def as_distillable(model: nn.Module) -> nn.Module:
    """``model``, or a transformers object detector wrapped to give losses by part, detections and
    pyramid features (:class:`~hf_freqkd.models.transformers_detection.TransformersDetector`; load_model
    wraps the detectors it loads, this wraps one built by the caller)."""
    from .models.transformers_detection import TransformersDetector, is_unwrapped_transformers_detector

    return TransformersDetector(model) if is_unwrapped_transformers_detector(model) else model


def resolve_task(task: Task | str | None, student: nn.Module) -> Task:
    """The run's task: the one named (checked against the student) or the one the student solves."""
    solved = task_for_model(student)
    if task is None:
        return solved
    task = get_task(task) if isinstance(task, str) else task
    # A task chosen by name may extend the student's (a classification variant with other metrics).
    if task.matches(student) or isinstance(task, type(solved)):
        return task
    raise ModelError(
        f"task '{task.name}' needs {task.model_kind}, but the student {type(student).__name__} is {solved.model_kind}: "
        f"use a student for {task.name}{f' (e.g. {task.example_model})' if task.example_model else ''}, or set task: {solved.name}"
    )


def load_teacher(teacher: nn.Module | str | None, args, methods: list[DistillationMethod], num_classes: int) -> nn.Module | None:
    """The teacher network, or None when no method uses one.

    ``teacher`` None takes ``args.teacher_model``. A source string is loaded with ``args``' teacher
    settings: an architecture name builds a head for ``num_classes`` (its checkpoint must fit); saved
    folders and pretrained weights keep their own head, checked against the student's by the caller.
    """
    needing = [method.name for method in methods if method.uses_teacher]
    if not needing:
        return None
    teacher = teacher if teacher is not None else getattr(args, "teacher_model", None)
    if teacher is None:
        raise ConfigError(f"method(s) {', '.join(needing)} need a teacher: set teacher_model in the config or pass teacher=")
    if isinstance(teacher, str):
        pretrained = bool(getattr(args, "teacher_pretrained", False))
        builds_head = not (os.path.isdir(teacher) or pretrained)
        teacher = load_model(
            teacher,
            num_classes=num_classes if builds_head else None,
            checkpoint=getattr(args, "teacher_checkpoint", None),
            pretrained=pretrained,
            model_kwargs=getattr(args, "teacher_model_kwargs", None),
            trust_remote_code=bool(getattr(args, "trust_remote_code", False)),
        )
    return teacher


def check_finite_weights(model: nn.Module, role: str, source: str) -> None:
    """Refuse NaN / inf weights now: they would only show up as a NaN loss once training has started."""
    tensors = (*model.named_parameters(), *model.named_buffers())
    bad = [name for name, tensor in tensors if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ModelError(
            f"the {role}'s weights hold non-finite values (NaN or inf) in {', '.join(bad[:3])}"
            f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}: '{source}' is corrupted or diverged; "
            f"use another {role} checkpoint"
        )


def first_training_input(dataset) -> torch.Tensor:
    """The first row's ``pixel_values`` as a batch of one; a DataError if rows are not model inputs."""
    row = dataset[0]
    if "pixel_values" not in row:
        raise DataError(
            f"training rows must hold 'pixel_values' (and 'labels'); got {', '.join(row)}. "
            "Format the dataset with hf_freqkd.data.with_image_transform."
        )
    return torch.as_tensor(row["pixel_values"]).unsqueeze(0)


def probe_input(student: nn.Module, train_dataset=None) -> torch.Tensor:
    """One real input (the first training row) or, without data, a zero image of the model's size."""
    if train_dataset is not None and hasattr(train_dataset, "__getitem__") and len(train_dataset) > 0:
        return first_training_input(train_dataset)
    return torch.zeros(1, *resolve_input_config(student)["input_size"])


def probe_feature_shapes(sample: torch.Tensor, extractor: FeatureExtractor, role: str) -> dict[str, torch.Size]:
    """Run ``extractor`` once (eval mode, no grad) on ``sample``: check the input fits, read feature shapes."""
    was_training = extractor.training
    extractor.eval()
    device = next(extractor.parameters()).device
    try:
        with torch.no_grad():
            output = extractor(sample.to(device))
    except Exception as error:  # noqa: BLE001 - report which model and input failed
        raise ModelError(
            f"the {role} ({type(extractor.model).__name__}) cannot take inputs of shape {tuple(sample.shape[1:])}: "
            f"{error}. Set image_size to a size the model accepts."
        ) from None
    finally:
        extractor.train(was_training)
    return {name: value.shape for name, value in output.features.items()}

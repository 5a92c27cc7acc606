"""The timing harness of every speed figure: ``hf-freqkd benchmark speed`` and ``benchmarks/*.py``.

The limit is what every method must pay: one student training step (forward, backward, SGD update)
plus one teacher no-grad forward. A method's step runs the same through the modules
:func:`hf_freqkd.factory.build_distillation` builds for training (the real ``Distiller``, method
modules and frozen teacher), with the same optimiser (:func:`sgd`). Steps are timed interleaved
(:func:`time_interleaved`), so load from other processes hits all of them alike, and medians are
reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .factory import DistillationParts, build_distillation
from .models.features import FeatureExtractor, FrozenTeacher
from .tasks import task_for_model

Step = Callable[[], None]


@dataclass
class StepTiming:
    limit_seconds: float
    step_seconds: float

    @property
    def ratio(self) -> float:
        return self.step_seconds / self.limit_seconds


def sgd(parameters) -> torch.optim.Optimizer:
    """The optimiser of every timed training step."""
    return torch.optim.SGD(parameters, lr=0.01, momentum=0.9)


def limit_step(student: nn.Module, teacher: FrozenTeacher, images: torch.Tensor, labels: torch.Tensor) -> Step:
    """One student training step (its task's loss: cross-entropy, or a detector's own losses) plus one
    teacher no-grad forward (a detector's whole forward, detections included)."""
    optimizer = sgd(student.parameters())
    student.train()
    task = task_for_model(student)
    student_outputs = FeatureExtractor(student)

    def step() -> None:
        teacher(images)
        loss = task.eval_loss(student_outputs(images, labels), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def distillation_step(parts: DistillationParts, images: torch.Tensor, labels: torch.Tensor, teacher: FrozenTeacher | None = None) -> Step:
    """One training step of ``parts`` as the trainer takes it: teacher forward, Distiller forward
    (student + every method's terms), backward, SGD update of the student and the methods' modules.
    ``teacher`` defaults to ``parts.teacher``; pass one to run a teacher for label-only methods too."""
    teacher = teacher if teacher is not None else parts.teacher
    distiller = parts.distiller.train()
    optimizer = sgd(distiller.parameters())

    def step() -> None:
        teacher_output = teacher(images) if teacher is not None else None
        output = distiller(
            images,
            labels,
            teacher_logits=teacher_output.logits if teacher_output is not None else None,
            teacher_features=teacher_output.features if teacher_output is not None else None,
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()

    return step


def training_steps(student: nn.Module, teacher: nn.Module, methods: dict[str, Any], batch: int, image_size: int) -> tuple[Step, Step]:
    """``(limit, method_step)`` on a fixed random batch. Both update the same ``student``;
    ``method_step`` also the methods' parameters. Both run the teacher (label-only methods too)."""
    num_classes = int(student.num_classes)
    images = torch.randn(batch, 3, image_size, image_size)
    labels = task_for_model(student).random_labels(batch, image_size, num_classes)
    parts = build_distillation(student, teacher, methods, sample_input=images[:2])
    frozen_teacher = parts.teacher if parts.teacher is not None else FrozenTeacher(teacher)
    return limit_step(student, frozen_teacher, images, labels), distillation_step(parts, images, labels, frozen_teacher)


def student_alone_step(student: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Step:
    """One student training step and nothing else: what training costs without any teacher."""
    optimizer = sgd(student.parameters())
    student.train()
    task = task_for_model(student)
    student_outputs = FeatureExtractor(student)

    def step() -> None:
        loss = task.eval_loss(student_outputs(images, labels), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def cached_teacher(parts: DistillationParts, images: torch.Tensor, folder: str):
    """A :class:`~hf_freqkd.teacher_cache.TeacherCache` of ``parts.teacher`` on ``images`` (one view per row),
    written by the same builder training uses into ``folder``."""
    from pathlib import Path

    from .teacher_cache import CacheIdentity, CachePlan, build_teacher_cache

    rows = [{"pixel_values": image} for image in images]
    plan = CachePlan(
        path=Path(folder) / "teacher_cache", identity=CacheIdentity("speed", "speed", "speed", None, 1), augmented=False,
        features=list(parts.teacher.layers), dtype="float32", max_bytes=float(2**40),
    )
    collate = lambda batch: {"pixel_values": torch.stack([row["pixel_values"] for row in batch])}  # noqa: E731
    return build_teacher_cache(plan, parts.teacher, rows, lambda epoch: None, collate, batch_size=len(rows), log=lambda line: None)


def cached_distillation_step(parts: DistillationParts, images: torch.Tensor, labels: torch.Tensor, cache) -> Step:
    """One training step as the trainer takes it with ``teacher_cache``: the batch's rows read from the
    cache (in shuffled order, as a sampler draws them) instead of a teacher forward."""
    distiller = parts.distiller.train()
    optimizer = sgd(distiller.parameters())
    rows = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    epochs = torch.zeros_like(rows)
    images, labels = images[rows], labels[rows]

    def step() -> None:
        teacher_output = cache.read(epochs, rows)
        output = distiller(images, labels, teacher_logits=teacher_output.logits, teacher_features=teacher_output.features)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()

    return step


def time_cached_step(
    student: nn.Module, teacher: nn.Module, methods: dict[str, Any], batch: int, image_size: int, folder: str,
    iterations: int = 10, warmup: int = 3,
) -> dict[str, float]:
    """Median seconds of the limit, of the student alone and of a step of ``methods`` reading a teacher
    cache, measured alternately in one run."""
    images = torch.randn(batch, 3, image_size, image_size)
    labels = task_for_model(student).random_labels(batch, image_size, int(student.num_classes))
    parts = build_distillation(student, teacher, methods, sample_input=images[:2])
    cache = cached_teacher(parts, images, folder)
    steps = {
        "limit": limit_step(student, parts.teacher, images, labels),
        "alone": student_alone_step(student, images, labels),
        "step": cached_distillation_step(parts, images, labels, cache),
    }
    times = time_interleaved(steps, iterations, warmup)
    return {name: statistics.median(values) for name, values in times.items()}


def time_interleaved(steps: dict[str, Step], iterations: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds of each of ``iterations`` calls of every step after ``warmup`` untimed rounds; the
    steps take turns, so load from other processes hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(warmup + iterations):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def time_step(
    student: nn.Module, teacher: nn.Module, methods: dict[str, Any], batch: int, image_size: int, iterations: int = 10, warmup: int = 3
) -> StepTiming:
    """Median seconds of the limit and of a step of ``methods``, measured alternately in one run."""
    limit, method_step = training_steps(student, teacher, methods, batch, image_size)
    times = time_interleaved({"limit": limit, "step": method_step}, iterations, warmup)
    return StepTiming(statistics.median(times["limit"]), statistics.median(times["step"]))


def time_call(fn: Step, iterations: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``fn()``."""
    return statistics.median(time_interleaved({"call": fn}, iterations, warmup)["call"])

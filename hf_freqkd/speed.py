"""Step timing for speed benchmarks: a distillation step against the limit of any distillation.

The limit is what every method must pay: one student training step (forward, backward, SGD update)
plus one teacher no-grad forward. A method's step runs the same through the real ``Distiller`` and
method modules. Iterations of the two alternate, so load from other processes hits both alike,
and the ratio of medians is what is reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .distiller import Distiller
from .methods.registry import build_methods
from .models.features import BackboneInfo, FeatureExtractor, FrozenTeacher


@dataclass
class StepTiming:
    limit_seconds: float
    step_seconds: float

    @property
    def ratio(self) -> float:
        return self.step_seconds / self.limit_seconds


def build_distiller(student: nn.Module, teacher: nn.Module, methods: dict[str, Any], sample: torch.Tensor):
    """The Distiller and frozen teacher the trainer would build, without a Trainer around them."""
    built = build_methods(methods)
    student_info, teacher_info = BackboneInfo.of(student), BackboneInfo.of(teacher)
    requests = [m.feature_request(student_info, teacher_info) for m in built]
    student_fx = FeatureExtractor(student, [n for r in requests for n in r.student])
    teacher_fx = FrozenTeacher(teacher, [n for r in requests for n in r.teacher])
    with torch.no_grad():
        student_fx.eval()
        s_shapes = {k: v.shape for k, v in student_fx(sample[:2]).features.items()}
        t_shapes = {k: v.shape for k, v in teacher_fx(sample[:2]).features.items()}
        student_fx.train()
    num_classes = int(getattr(student, "num_classes", 0) or student_fx(sample[:1]).logits.shape[-1])
    for method in built:
        method.build(s_shapes, t_shapes, num_classes)
    return Distiller(student_fx, built), teacher_fx


def training_steps(student: nn.Module, teacher: nn.Module, methods: dict[str, Any], batch: int, image_size: int):
    """``(limit, method_step)``: callables running one limit step and one step of ``methods`` on a
    fixed random batch. Both update the same ``student``; ``method_step`` also the method's parameters."""
    num_classes = int(student.num_classes)
    images = torch.randn(batch, 3, image_size, image_size)
    labels = torch.randint(0, num_classes, (batch,))
    distiller, teacher_fx = build_distiller(student, teacher, methods, images)
    distiller.train()
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.01, momentum=0.9)
    student_optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def limit() -> None:
        with torch.no_grad():
            teacher_fx(images)
        loss = nn.functional.cross_entropy(student(images), labels)
        student_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        student_optimizer.step()

    def method_step() -> None:
        teacher_out = teacher_fx(images)
        out = distiller(images, labels, teacher_logits=teacher_out.logits, teacher_features=teacher_out.features)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return limit, method_step


def time_step(
    student: nn.Module, teacher: nn.Module, methods: dict[str, Any], batch: int, image_size: int, iterations: int = 10, warmup: int = 3
) -> StepTiming:
    """Median seconds of the limit and of a step of ``methods``, measured alternately in one run."""
    limit, method_step = training_steps(student, teacher, methods, batch, image_size)
    limits, steps = [], []
    for i in range(warmup + iterations):
        for fn, store in ((limit, limits), (method_step, steps)):
            start = time.perf_counter()
            fn()
            if i >= warmup:
                store.append(time.perf_counter() - start)
    return StepTiming(statistics.median(limits), statistics.median(steps))


def time_call(fn, iterations: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

"""Step timing used by the speed benchmarks."""

import math
import time

import pytest
import timm
import torch

import hf_freqkd  # noqa: F401
from hf_freqkd.speed import time_call, time_interleaved, time_step


def test_time_step_measures_both_sides_and_trains_the_student():
    student, teacher = timm.create_model("resnet8", num_classes=10), timm.create_model("resnet8", num_classes=10)
    before, teacher_before = student.fc.weight.detach().clone(), teacher.fc.weight.detach().clone()
    timing = time_step(student, teacher, {"figkd": {}}, batch=4, image_size=16, iterations=2, warmup=1)
    for seconds in (timing.limit_seconds, timing.step_seconds):
        assert 0 < seconds < 60 and math.isfinite(seconds)
    assert timing.ratio == timing.step_seconds / timing.limit_seconds
    assert not (student.fc.weight == before).all()
    assert torch.equal(teacher.fc.weight, teacher_before)  # the teacher is only run, never trained


class FakeClock:
    """``time.perf_counter`` that only moves when a timed call says how long it took."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_time_call_returns_the_median_of_the_timed_calls(monkeypatch):
    # Warm-up calls take 100 s each: counted, they would move the median to 0.5 s. The mean of the
    # timed calls is 0.37 s and their minimum 0.1 s; only the median is 0.2 s.
    durations = iter([100.0, 100.0, 0.1, 0.2, 0.9, 0.15, 0.5])
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    calls = []

    def call():
        calls.append(1)
        clock.now += next(durations)

    assert time_call(call, iterations=5, warmup=2) == pytest.approx(0.2)
    assert len(calls) == 7


def test_time_call_of_real_work_is_positive_and_finite():
    weights = torch.randn(64, 64)
    seconds = time_call(lambda: weights @ weights, iterations=3, warmup=1)
    assert 0 < seconds < 60 and math.isfinite(seconds)


def test_time_interleaved_alternates_the_steps_and_drops_the_warmup():
    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, iterations=3, warmup=1)
    assert calls == ["a", "b"] * 4  # turns, so machine load hits both alike
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3}

"""Step timing used by the speed benchmarks."""

import math

import timm

import hf_freqkd  # noqa: F401
from hf_freqkd.speed import time_call, time_step


def test_time_step_measures_both_sides_and_trains_the_student():
    student = timm.create_model("resnet8", num_classes=10)
    before = student.fc.weight.detach().clone()
    timing = time_step(student, timm.create_model("resnet8", num_classes=10), {"figkd": {}}, batch=4, image_size=16, iterations=2, warmup=1)
    assert timing.limit_seconds > 0 and timing.step_seconds > 0 and math.isfinite(timing.ratio)
    assert not (student.fc.weight == before).all()


def test_time_call_returns_the_median():
    calls = []
    assert time_call(lambda: calls.append(1), iterations=5, warmup=2) >= 0
    assert len(calls) == 7

"""``kd``: Hinton's loss against values computed by hand, and its exact properties."""

from __future__ import annotations

import math

import pytest
import torch

from hf_freqkd.methods import LogitsAndFeatures
from hf_freqkd.methods.kd import KDOptions, KnowledgeDistillation


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def hand_kd(student, teacher, temperature):
    p_s, p_t = softmax(student, temperature), softmax(teacher, temperature)
    return temperature**2 * sum(t * math.log(t / s) for s, t in zip(p_s, p_t))


def kd_loss(student_logits, teacher_logits, temperature=4.0):
    method = KnowledgeDistillation(KDOptions(temperature=temperature))
    labels = torch.zeros(len(student_logits), dtype=torch.long)
    return method(LogitsAndFeatures(student_logits), LogitsAndFeatures(teacher_logits), labels)["loss_kd"]


def test_matches_hand_computed_value():
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    teacher = [[3.0, 2.0, 1.0], [0.0, 0.0, 4.0]]
    expected = sum(hand_kd(s, t, 2.0) for s, t in zip(student, teacher)) / 2  # batch mean
    assert kd_loss(torch.tensor(student), torch.tensor(teacher), 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_zero_when_student_equals_teacher_and_positive_otherwise():
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, logits.flip(1)).item() > 0.01


def test_invariant_to_a_constant_shift_of_the_logits():
    student, teacher = torch.randn(4, 7), torch.randn(4, 7)
    assert kd_loss(student + 100.0, teacher).item() == pytest.approx(kd_loss(student, teacher).item(), rel=1e-4)


def test_gradient_reaches_the_student_only_and_is_finite_for_extreme_logits():
    student = (torch.randn(4, 10) * 1e4).requires_grad_()
    teacher = torch.randn(4, 10) * 1e4
    loss = kd_loss(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_bf16_logits_are_computed_in_float32():
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    reduced = kd_loss(student.bfloat16(), teacher.bfloat16())
    assert reduced.dtype == torch.float32
    assert reduced.item() == pytest.approx(kd_loss(student.bfloat16().float(), teacher.bfloat16().float()).item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature_is_rejected(temperature):
    with pytest.raises(ValueError, match="option 'temperature'"):
        KDOptions(temperature=temperature)

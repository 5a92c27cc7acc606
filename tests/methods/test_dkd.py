"""``dkd``: closed form on hand-made logits, the KD = TCKD + (1 - p_t) NCKD identity, stability."""

from __future__ import annotations

import math

import pytest
import torch

from hf_freqkd.methods import LogitsAndFeatures
from hf_freqkd.methods.dkd import DKD, DKDOptions, decoupled_kd_terms
from hf_freqkd.methods.kd import kl_divergence_with_temperature


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def hand_dkd(student, teacher, target, temperature):
    p_s = softmax([v / temperature for v in student])
    p_t = softmax([v / temperature for v in teacher])
    tckd = kl([p_t[target], 1 - p_t[target]], [p_s[target], 1 - p_s[target]]) * temperature**2
    others = [i for i in range(len(student)) if i != target]
    nckd = kl(softmax([teacher[i] / temperature for i in others]), softmax([student[i] / temperature for i in others])) * temperature**2
    return tckd, nckd


def test_terms_equal_their_closed_form_on_hand_made_logits():
    student = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -2.0]]
    teacher = [[4.0, 1.0, -2.0, 0.5], [-1.0, 0.0, 2.0, 1.0]]
    labels = [0, 2]
    tckd, nckd = decoupled_kd_terms(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), 2.0)
    for row in range(2):
        expected_tckd, expected_nckd = hand_dkd(student[row], teacher[row], labels[row], 2.0)
        assert tckd[row].item() == pytest.approx(expected_tckd, rel=1e-5)
        assert nckd[row].item() == pytest.approx(expected_nckd, rel=1e-5)

    method = DKD(DKDOptions(alpha=0.5, beta=3.0, temperature=2.0))
    terms = method(LogitsAndFeatures(torch.tensor(student)), LogitsAndFeatures(torch.tensor(teacher)), torch.tensor(labels))
    assert terms["loss_tckd"].item() == pytest.approx(0.5 * tckd.mean().item(), rel=1e-6)
    assert terms["loss_nckd"].item() == pytest.approx(3.0 * nckd.mean().item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_decomposes_into_tckd_plus_weighted_nckd_per_sample(temperature):
    student, teacher = torch.randn(16, 100) * 3, torch.randn(16, 100) * 3
    labels = torch.randint(0, 100, (16,))
    tckd, nckd = decoupled_kd_terms(student, teacher, labels, temperature)
    p_target_teacher = (teacher / temperature).softmax(-1).gather(1, labels[:, None]).squeeze(1)
    for row in range(16):
        kd = kl_divergence_with_temperature(student[row : row + 1], teacher[row : row + 1], temperature)
        assert kd.item() == pytest.approx((tckd[row] + (1 - p_target_teacher[row]) * nckd[row]).item(), rel=1e-4, abs=1e-6)


def test_finite_gradients_for_extreme_and_bf16_logits():
    method = DKD()
    labels = torch.tensor([0, 3, 7, 9])
    student = (torch.randn(4, 10) * 1e4).requires_grad_()
    terms = method(LogitsAndFeatures(student), LogitsAndFeatures(torch.randn(4, 10) * 1e4), labels)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values()) and torch.isfinite(student.grad).all()

    student = torch.randn(4, 10).bfloat16().requires_grad_()
    terms = method(LogitsAndFeatures(student), LogitsAndFeatures(torch.randn(4, 10).bfloat16()), labels)
    sum(terms.values()).backward()
    assert torch.isfinite(student.grad.float()).all()


def test_zero_when_student_equals_teacher():
    logits = torch.randn(4, 10)
    terms = DKD()(LogitsAndFeatures(logits), LogitsAndFeatures(logits.clone()), torch.tensor([1, 2, 3, 4]))
    assert all(v.item() == pytest.approx(0.0, abs=1e-6) for v in terms.values())


@pytest.mark.parametrize("option", ["alpha", "beta", "temperature"])
def test_bad_options(option):
    with pytest.raises(ValueError, match=f"option '{option}' = -1.0 is invalid"):
        DKDOptions(**{option: -1.0})

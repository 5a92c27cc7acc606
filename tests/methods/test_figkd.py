"""``figkd``: the exact properties of high-frequency logit distillation, every class count, bad options."""

from __future__ import annotations

import pytest
import pywt
import torch

from hf_freqkd.frequency import wavelet1d
from hf_freqkd.methods import LogitsAndFeatures, build_methods
from hf_freqkd.methods.figkd import FiGKD, FiGKDOptions
from hf_freqkd.methods.kd import kl_divergence_with_temperature


def figkd(num_classes: int, **options) -> FiGKD:
    method = FiGKD(FiGKDOptions(**options))
    method.build({}, {}, num_classes)
    return method


def loss(method: FiGKD, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    labels = torch.zeros(student.shape[0], dtype=torch.long)
    return method(LogitsAndFeatures(student), LogitsAndFeatures(teacher), labels)["loss_figkd"]


@pytest.mark.parametrize("backend", ["ptwt", "matrix"])
def test_constant_shift_of_the_student_leaves_the_term_unchanged(backend):
    method = figkd(100, backend=backend)
    student, teacher = torch.randn(6, 100), torch.randn(6, 100)
    torch.testing.assert_close(loss(method, student + 7.5, teacher), loss(method, student, teacher), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["ptwt", "matrix"])
def test_haar_any_signal_in_the_level_j_approximation_leaves_the_term_unchanged(backend):
    method = figkd(100, levels=2, backend=backend)
    student, teacher = torch.randn(6, 100), torch.randn(6, 100)
    # A signal made of level-2 approximation coefficients only (no detail).
    approximation = pywt.waverec([torch.randn(6, 25).double().numpy(), *([torch.zeros(6, 25).numpy()] + [torch.zeros(6, 50).numpy()])], "haar")
    smooth = torch.from_numpy(approximation).float() * 3.0
    assert smooth.std() > 1.0
    torch.testing.assert_close(loss(method, student + smooth, teacher), loss(method, student, teacher), rtol=1e-4, atol=1e-5)
    # ... while a detail-band signal of the same size does change it.
    assert not torch.allclose(loss(method, student + smooth.roll(1, dims=1), teacher), loss(method, student, teacher), atol=1e-3)


@pytest.mark.parametrize("target", ["highpass_kl", "coef_kl", "coef_mse"])
def test_zero_when_student_equals_teacher(target):
    method = figkd(67, target=target, levels=2, wavelet="db2")
    logits = torch.randn(5, 67)
    assert loss(method, logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(method, torch.randn(5, 67), logits).item() > 1e-3


def test_all_bands_with_highpass_kl_equals_plain_kd():
    method = figkd(100, bands="all", levels=3, wavelet="db2", temperature=3.0)
    student, teacher = torch.randn(8, 100) * 3, torch.randn(8, 100) * 3
    expected = kl_divergence_with_temperature(student, teacher, 3.0)
    torch.testing.assert_close(loss(method, student, teacher), expected, rtol=1e-4, atol=1e-6)


def test_coef_mse_is_the_mse_of_the_pywt_detail_coefficients():
    method = figkd(10, target="coef_mse", levels=1, backend="ptwt")
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    detail = lambda z: torch.from_numpy(pywt.wavedec(z.double().numpy(), "haar", mode="symmetric", level=1)[1]).float()  # noqa: E731
    expected = ((detail(student) - detail(teacher)) ** 2).mean()
    assert loss(method, student, teacher).item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_two_backends_agree():
    student, teacher = torch.randn(6, 67), torch.randn(6, 67)
    for options in ({}, {"levels": 2, "wavelet": "db2", "bands": [2]}, {"target": "coef_kl", "levels": 3}, {"bands": "low"}):
        torch.testing.assert_close(
            loss(figkd(67, backend="ptwt", **options), student, teacher),
            loss(figkd(67, backend="matrix", **options), student, teacher),
            rtol=1e-4, atol=1e-6,
        )


def test_teacher_sorted_order_equals_natural_when_the_teacher_is_already_sorted():
    teacher = torch.randn(4, 10).sort(dim=1, descending=True).values
    student = torch.randn(4, 10)
    sorted_loss = loss(figkd(10, class_order="teacher_sorted"), student, teacher)
    torch.testing.assert_close(sorted_loss, loss(figkd(10), student, teacher))
    shuffled = torch.randperm(10)
    assert not torch.allclose(loss(figkd(10), student[:, shuffled], teacher[:, shuffled]), sorted_loss)
    torch.testing.assert_close(loss(figkd(10, class_order="teacher_sorted"), student[:, shuffled], teacher[:, shuffled]), sorted_loss)


def test_low_band_alone_is_a_different_signal_from_the_high_band():
    student, teacher = torch.randn(4, 100), torch.randn(4, 100)
    assert not torch.allclose(loss(figkd(100, bands="low"), student, teacher), loss(figkd(100), student, teacher))


@pytest.mark.parametrize("num_classes", [2, 10, 67, 100, 200, 1000])
def test_every_class_count_at_the_deepest_level(num_classes):
    for levels in sorted({1, wavelet1d.max_level(num_classes, "haar")}):
        method = figkd(num_classes, levels=levels)
        student = torch.randn(4, num_classes, requires_grad=True)
        value = loss(method, student, torch.randn(4, num_classes))
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(student.grad).all()


def test_gradients_are_finite_for_extreme_and_bf16_logits():
    method = figkd(100, levels=2, wavelet="db2")
    student = (torch.randn(4, 100) * 1e4).requires_grad_()
    value = loss(method, student, torch.randn(4, 100) * 1e4)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()

    student = torch.randn(4, 100).bfloat16().requires_grad_()
    value = loss(method, student, torch.randn(4, 100).bfloat16())
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(student.grad.float()).all()


def test_bf16_autocast_computes_the_transform_in_float32():
    method = figkd(67, backend="ptwt")
    student, teacher = torch.randn(4, 67), torch.randn(4, 67)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(method, student.bfloat16(), teacher.bfloat16())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(method, student.bfloat16().float(), teacher.bfloat16().float()).item(), rel=1e-4)


def test_defaults_are_the_documented_reading_of_the_paper():
    options = FiGKDOptions()
    assert (options.wavelet, options.levels, options.bands, options.target) == ("haar", 1, "high", "highpass_kl")
    assert (options.temperature, options.mode, options.class_order, options.weight) == (4.0, "symmetric", "natural", 4.0)
    assert [m.name for m in build_methods({"figkd": {}})] == ["ce", "figkd"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"wavelet": "wavelet9"}, "wavelet 'wavelet9' is not a discrete wavelet PyWavelets knows"),
        ({"temperature": 0.0}, "option 'temperature' = 0.0 is invalid"),
        ({"temperature": -2.0}, "option 'temperature' = -2.0 is invalid"),
        ({"levels": 0}, "option 'levels' = 0 is invalid"),
        ({"bands": [3], "levels": 2}, "option 'bands' = [3] is invalid: expected band numbers in 0..2"),
        ({"mode": "wrap"}, "option 'mode' = 'wrap' is invalid"),
        ({"mode": "periodization", "backend": "ptwt"}, "with backend ptwt"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        FiGKDOptions(**options)


def test_level_above_the_maximum_for_the_class_count_fails_at_build():
    method = FiGKD(FiGKDOptions(levels=4))
    with pytest.raises(ValueError, match=r"option 'levels' = 4 is invalid: expected at most 3 for 10 classes with wavelet haar"):
        method.build({}, {}, 10)


def test_unknown_band_name_through_the_config_path():
    with pytest.raises(ValueError, match="method 'figkd' option 'bands' = 'middle' is invalid"):
        build_methods({"figkd": {"bands": "middle"}})

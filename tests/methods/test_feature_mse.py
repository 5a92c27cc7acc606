"""``feature_mse``: the loss against a hand computation (1x1 adapter, resize to the teacher's grid,
mean squared error, summed over pairs), its exact zero, gradients to the student and adapters only,
option and shape checks, and a distillation built on classifiers and on detectors."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import hf_freqkd  # noqa: F401  registers the CIFAR zoo and the detectors
from hf_freqkd.errors import MethodOptionsError, ModelError
from hf_freqkd.factory import build_distillation
from hf_freqkd.methods import build_methods
from hf_freqkd.methods.feature_mse import FeatureMSE, FeatureMSEOptions
from hf_freqkd.types import BackboneInfo, LogitsAndFeatures

LABELS = torch.zeros(2, dtype=torch.long)


def built_method(student_shapes: dict, teacher_shapes: dict, **options) -> FeatureMSE:
    method = FeatureMSE(FeatureMSEOptions(**options))
    method.feature_request(BackboneInfo(tuple(student_shapes)), BackboneInfo(tuple(teacher_shapes)))
    method.build({k: torch.Size(v) for k, v in student_shapes.items()}, {k: torch.Size(v) for k, v in teacher_shapes.items()}, 10)
    return method


def loss_of(method: FeatureMSE, student: dict, teacher: dict) -> torch.Tensor:
    return method(LogitsAndFeatures(None, student), LogitsAndFeatures(None, teacher), LABELS)["loss_feature_mse"]


def hand_feature_mse(method: FeatureMSE, student: dict, teacher: dict) -> float:
    """sum over pairs of mean((W s + b - t)^2), the student map first resized to the teacher's grid."""
    total = 0.0
    for adapter, (student_layer, teacher_layer) in zip(method.adapters, method.pairs):
        s, t = student[student_layer].double(), teacher[teacher_layer].double()
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        weight, bias = adapter.weight.detach().double()[:, :, 0, 0], adapter.bias.detach().double()
        adapted = torch.einsum("oi,bihw->bohw", weight, s) + bias[None, :, None, None]
        total += ((adapted - t) ** 2).sum().item() / t.numel()
    return total


def test_matches_a_hand_computation_with_and_without_resizing():
    student_shapes = {"s1": (2, 4, 8, 8), "s2": (2, 6, 4, 4)}
    teacher_shapes = {"t1": (2, 5, 8, 8), "t2": (2, 3, 8, 8)}  # the second pair is resized 4x4 -> 8x8
    method = built_method(student_shapes, teacher_shapes)
    assert method.pairs == [("s1", "t1"), ("s2", "t2")]
    assert [(a.in_channels, a.out_channels, a.kernel_size) for a in method.adapters] == [(4, 5, (1, 1)), (6, 3, (1, 1))]
    student = {name: torch.randn(shape) for name, shape in student_shapes.items()}
    teacher = {name: torch.randn(shape) for name, shape in teacher_shapes.items()}
    loss = loss_of(method, student, teacher)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(hand_feature_mse(method, student, teacher), rel=1e-5)
    # summed, not averaged, over the pairs
    only_first = built_method({"s1": (2, 4, 8, 8)}, {"t1": (2, 5, 8, 8)})
    only_first.adapters[0].load_state_dict(method.adapters[0].state_dict())
    first = loss_of(only_first, {"s1": student["s1"]}, {"t1": teacher["t1"]})
    assert 0 < first.item() < loss.item()


def test_zero_when_the_adapted_student_equals_the_teacher():
    shapes = {"layer1": (2, 3, 6, 6), "layer2": (2, 4, 3, 3)}
    method = built_method(shapes, shapes)
    with torch.no_grad():
        for adapter in method.adapters:
            adapter.weight.copy_(torch.eye(adapter.in_channels)[:, :, None, None])
            adapter.bias.zero_()
    features = {name: torch.randn(shape) for name, shape in shapes.items()}
    assert loss_of(method, features, {k: v.clone() for k, v in features.items()}).item() == 0.0
    shifted = {k: v + 0.5 for k, v in features.items()}
    assert loss_of(method, features, shifted).item() == pytest.approx(2 * 0.25, rel=1e-6)  # two pairs, 0.5^2 each


def test_gradients_reach_the_student_and_adapters_never_the_teacher():
    method = built_method({"s": (2, 4, 4, 4)}, {"t": (2, 8, 8, 8)})
    student = torch.randn(2, 4, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 8, 8, 8, requires_grad=True)
    loss_of(method, {"s": student}, {"t": teacher}).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert method.adapters[0].weight.grad.abs().sum() > 0


def test_bf16_features_give_a_float32_loss():
    method = built_method({"s": (2, 4, 4, 4)}, {"t": (2, 4, 4, 4)})
    student, teacher = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    reduced = loss_of(method, {"s": student.bfloat16()}, {"t": teacher.bfloat16()})
    assert reduced.dtype == torch.float32
    exact = loss_of(method, {"s": student.bfloat16().float()}, {"t": teacher.bfloat16().float()})
    assert reduced.item() == pytest.approx(exact.item(), rel=1e-5)


def test_layer_lists_of_different_lengths_are_refused():
    with pytest.raises(MethodOptionsError, match=r"option 'student_layers' = \['layer1'\] is invalid: expected as many layers as teacher_layers \(2\)"):
        build_methods({"feature_mse": {"student_layers": ["layer1"], "teacher_layers": ["layer1", "layer2"]}})
    with pytest.raises(MethodOptionsError, match="weight"):
        build_methods({"feature_mse": {"weight": -1.0}})


def test_features_that_are_not_maps_are_refused_when_built():
    with pytest.raises(ModelError, match=r"feature_mse: the student feature 'global_pool' has shape \(1, 64\), not a \(B, C, H, W\) map"):
        build_distillation(
            timm.create_model("resnet8", num_classes=10), timm.create_model("resnet20", num_classes=10),
            {"feature_mse": {"student_layers": ["global_pool"], "teacher_layers": ["layer3"]}}, sample_input=torch.zeros(1, 3, 16, 16),
        )


def test_a_classifier_distillation_pairs_every_stage_and_trains_the_student():
    torch.manual_seed(0)
    student, teacher = timm.create_model("resnet8", num_classes=10), timm.create_model("resnet8x4", num_classes=10)
    parts = build_distillation(student, teacher, {"feature_mse": {"weight": 2.0}}, sample_input=torch.zeros(1, 3, 16, 16))
    method = parts.distiller.methods["feature_mse"]
    assert method.pairs == [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]
    assert [(a.in_channels, a.out_channels) for a in method.adapters] == [(16, 64), (32, 128), (64, 256)]
    assert parts.distiller.trainable_method_parameters() == sum(a.weight.numel() + a.bias.numel() for a in method.adapters)
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    teacher_output = parts.teacher(images)
    output = parts.distiller.train()(images, labels, teacher_output.logits, teacher_output.features)
    assert set(output.loss_terms) == {"loss_ce", "loss_feature_mse"}
    student_output = parts.distiller.student(images)
    unweighted = method(student_output, LogitsAndFeatures(teacher_output.logits, teacher_output.features), labels)["loss_feature_mse"]
    assert output.loss_terms["loss_feature_mse"].item() == pytest.approx(2.0 * unweighted.item(), rel=1e-5)
    output.loss_terms["loss_feature_mse"].backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    assert student.fc.weight.grad is None  # the feature term does not reach the classifier
    assert not any(p.grad is not None for p in teacher.parameters())


def test_a_detector_distillation_pairs_the_fpn_levels():
    torch.manual_seed(0)
    student, teacher = timm.create_model("retinanet_resnet8", num_classes=3), timm.create_model("retinanet_resnet20", num_classes=3)
    parts = build_distillation(student, teacher, {"feature_mse": {}}, sample_input=torch.zeros(1, 3, 32, 32))
    method = parts.distiller.methods["feature_mse"]
    levels = ["fpn.p1", "fpn.p2", "fpn.p3", "fpn.p4"]
    assert method.pairs == list(zip(levels, levels))
    assert [(a.in_channels, a.out_channels) for a in method.adapters] == [(32, 32)] * 4
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[[0, 2.0, 2.0, 14.0, 14.0]], [[1, 8.0, 8.0, 30.0, 24.0]]])
    teacher_output = parts.teacher(images)
    output = parts.distiller.train()(images, labels, teacher_output.logits, teacher_output.features)
    assert set(output.loss_terms) == {"loss_classification", "loss_box_regression", "loss_feature_mse"}
    term = output.loss_terms["loss_feature_mse"]
    assert torch.isfinite(term) and term.item() > 0
    term.backward()
    assert student.fpn.pyramid.layer_blocks[0][0].weight.grad.abs().sum() > 0
    assert student.body.conv1.weight.grad.abs().sum() > 0
    assert student.get_classifier().weight.grad is None  # the feature term does not reach the heads

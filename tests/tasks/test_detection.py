"""The detection task: which networks it takes, the student / teacher checks (same task, same FPN
levels), the methods it refuses, the layout of training rows, the evaluation loss, and every
feature method it allows training a detector student through build_distillation."""

from __future__ import annotations

import pytest
import timm
import torch

import hf_freqkd  # noqa: F401  registers the detectors
from hf_freqkd.errors import DataError, MethodOptionsError, ModelError
from hf_freqkd.factory import build_distillation
from hf_freqkd.models import FrozenTeacher
from hf_freqkd.tasks import get_task, task_for_model
from hf_freqkd.types import LogitsAndFeatures

LEVELS = ["fpn.p1", "fpn.p2", "fpn.p3", "fpn.p4"]  # retinanet on the CIFAR zoo: strides 2 ... 16
SAMPLE = torch.zeros(1, 3, 32, 32)


def detector(name: str = "retinanet_resnet8", seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=3, **kwargs)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[[0, 2.0, 2.0, 14.0, 14.0], [2, 16.0, 4.0, 30.0, 20.0]], [[1, 8.0, 8.0, 30.0, 24.0], [-100, 0.0, 0.0, 0.0, 0.0]]])
    return images, labels


# -- models -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["retinanet_resnet8", "fcos_resnet8", "fasterrcnn_resnet8"])
def test_detectors_are_the_detection_tasks_and_classifiers_are_not(name):
    task = get_task("detection")
    assert task_for_model(detector(name)) is task
    assert task_for_model(timm.create_model("resnet8")) is get_task("classification")
    assert task_for_model(timm.create_model("segfpn_resnet8")) is get_task("segmentation")
    assert task.pipeline_tag == "object-detection"


def test_a_classifier_teacher_for_a_detector_student_is_refused():
    classifier = timm.create_model("resnet8", num_classes=3)
    with pytest.raises(ModelError, match="the student TimmDetector is an object detector but the teacher CifarResNet is an image classifier"):
        build_distillation(detector(), classifier, {"feature_mse": {}}, sample_input=SAMPLE)
    with pytest.raises(ModelError, match="the student CifarResNet is an image classifier but the teacher TimmDetector is an object detector"):
        build_distillation(classifier, detector(), {"feature_mse": {}}, sample_input=SAMPLE)


def test_teachers_with_other_fpn_levels_are_refused_naming_both_lists():
    student = detector()
    teacher = detector("retinanet_resnet18")
    expected = (
        r"the FPN levels of the student \(fpn.p1 \(stride 2\), fpn.p2 \(stride 4\), fpn.p3 \(stride 8\), fpn.p4 \(stride 16\)\) "
        r"and the teacher \(fpn.p3 \(stride 8\), fpn.p4 \(stride 16\), fpn.p5 \(stride 32\), fpn.p6 \(stride 64\), fpn.p7 \(stride 128\)\) differ"
    )
    with pytest.raises(ModelError, match=expected):
        build_distillation(student, teacher, {"feature_mse": {}}, sample_input=SAMPLE)
    # the same strides but another level count (Faster R-CNN has one extra level, not two) is refused too
    with pytest.raises(ModelError, match=r"and the teacher \(fpn.p1 \(stride 2\), fpn.p2 \(stride 4\), fpn.p3 \(stride 8\)\) differ"):
        get_task("detection").check_models(student, detector("fasterrcnn_resnet20"))
    # other families with the same levels may distil into each other
    get_task("detection").check_models(student, detector("fcos_resnet20"))


@pytest.mark.parametrize("methods, refused", [({"kd": {}}, "kd"), ({"dkd": {}, "figkd": {}}, "dkd, figkd")])
def test_logit_methods_are_refused_naming_the_methods_that_apply(methods, refused):
    message = (
        rf"method\(s\) {refused} do not apply to detection \(an object detector\); "
        r"methods that do: ce, fam, fam_l2l, feature_mse, freekd"
    )
    with pytest.raises(MethodOptionsError, match=message):
        build_distillation(detector(), detector("retinanet_resnet20"), methods, sample_input=SAMPLE)


# -- training rows and evaluation loss --------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 5)])
def test_training_rows_that_are_not_box_rows_are_refused(shape):
    rows = [{"pixel_values": torch.zeros(3, 32, 32), "labels": torch.zeros(shape)}]
    with pytest.raises(DataError, match=rf"labels of shape \({', '.join(map(str, shape))},?\), not \(boxes, 5\) rows"):
        get_task("detection").check_training_rows(rows)


@pytest.mark.parametrize("shape", [(3, 5), (0, 5)])
def test_box_rows_and_images_without_boxes_are_accepted(shape):
    get_task("detection").check_training_rows([{"pixel_values": torch.zeros(3, 32, 32), "labels": torch.zeros(shape)}])
    get_task("detection").check_training_rows([{"pixel_values": torch.zeros(3, 32, 32), "labels": [[0, 1.0, 1.0, 4.0, 4.0]]}])


def test_eval_loss_is_the_sum_of_the_detectors_losses_in_float32():
    losses = {"classification": torch.tensor(1.5, dtype=torch.bfloat16), "box_regression": torch.tensor(0.25)}
    loss = get_task("detection").eval_loss(LogitsAndFeatures(None, losses=losses), torch.zeros(1, 1, 5))
    assert loss.dtype == torch.float32 and loss.item() == 1.75


def test_evaluation_through_the_distiller_reports_the_students_own_loss():
    parts = build_distillation(detector(), None, {"ce": {}}, sample_input=SAMPLE)
    assert parts.teacher is None and parts.task is get_task("detection")
    images, labels = batch()
    with torch.no_grad():
        output = parts.distiller.eval()(images, labels)
        expected = sum(parts.student(images, labels).losses.values())
    assert output.loss_terms is None and output.logits.shape == (2, 100, 6)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name, parts", [
    ("retinanet_resnet8", {"classification", "box_regression"}),
    ("fasterrcnn_resnet8", {"objectness", "rpn_box_regression", "classification", "box_regression"}),
])
def test_the_label_term_is_the_detectors_own_loss_by_part(name, parts):
    distillation = build_distillation(detector(name), None, {"ce": {"weight": 0.5}}, sample_input=SAMPLE)
    images, labels = batch()
    torch.manual_seed(2)
    output = distillation.distiller.train()(images, labels)
    assert set(output.loss_terms) == {f"loss_{part}" for part in parts}
    torch.manual_seed(2)
    own = distillation.student(images, labels).losses
    for part in parts:
        assert output.loss_terms[f"loss_{part}"].item() == pytest.approx(0.5 * own[part].item(), rel=1e-5)
    assert output.loss.item() == pytest.approx(0.5 * sum(own.values()).item(), rel=1e-5)


# -- feature methods on a detector pair -------------------------------------------------------------


@pytest.mark.parametrize(
    "method, options",
    [
        ("fam", {"pooled_stage": "none"}),
        ("fam_l2l", {}),
        ("freekd", {"masks": "uniform", "teacher_layers": LEVELS, "student_layers": LEVELS}),
        ("feature_mse", {}),
    ],
)
def test_feature_methods_train_a_detector_student_on_the_fpn_levels(method, options):
    student, teacher = detector(seed=0), detector("retinanet_resnet20", seed=1)
    parts = build_distillation(student, teacher, {method: options}, sample_input=SAMPLE)
    assert set(parts.teacher.layers) == set(LEVELS) and set(parts.distiller.student.layers) == set(LEVELS)
    images, labels = batch()
    teacher_output = parts.teacher(images)
    assert set(teacher_output.features) == set(LEVELS) and not any(f.requires_grad for f in teacher_output.features.values())
    output = parts.distiller.train()(images, labels, teacher_output.logits, teacher_output.features)
    term_name = f"loss_{method}"
    assert set(output.loss_terms) == {"loss_classification", "loss_box_regression", term_name}
    term = output.loss_terms[term_name]
    assert term.dim() == 0 and torch.isfinite(term) and term.item() > 0
    assert output.loss.item() == pytest.approx(sum(value.item() for value in output.loss_terms.values()), rel=1e-5)
    term.backward()
    for part, parameter in {"body": student.body.conv1.weight, "fpn": student.fpn.pyramid.inner_blocks[0][0].weight}.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, part
    assert not any(p.grad is not None for p in teacher.parameters())


def test_a_teacher_read_only_for_its_features_stops_after_the_fpn():
    # Feature methods never read the teacher's detections: the frozen teacher skips head and NMS,
    # and its FPN levels are exactly those of the full forward.
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    teacher = timm.create_model("retinanet_resnet20", num_classes=3)
    parts = build_distillation(timm.create_model("retinanet_resnet8", num_classes=3), teacher, {"feature_mse": {}}, sample_input=images[:1])
    assert parts.teacher.predictions is False
    output = parts.teacher(images)
    assert output.logits is None and set(output.features) == {"fpn.p1", "fpn.p2", "fpn.p3", "fpn.p4"}
    full = FrozenTeacher(teacher, list(output.features))(images)
    assert full.logits is not None and full.logits.shape == (2, 100, 6)
    for name, level in output.features.items():
        assert torch.equal(level, full.features[name]), name

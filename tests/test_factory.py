"""build_distillation: the one place a distillation is built (student extractor, frozen teacher,
methods after one probe pass), shared by the trainer, prompt fitting and the speed benchmarks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import hf_freqkd
from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.errors import ConfigError, ModelError
from hf_freqkd.factory import DistillationParts, build_distillation
from hf_freqkd.methods import build_methods
from hf_freqkd.models import FrozenTeacher

REPO = Path(hf_freqkd.__file__).parent.parent


def tiny(name: str, seed: int, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10, **kwargs)


def test_parts_hold_a_trainable_distiller_and_a_frozen_teacher_apart():
    teacher = tiny("resnet14", 1)
    parts = build_distillation(tiny("resnet8", 0), teacher, {"kd": {}, "fam": {}}, sample_input=torch.zeros(1, 3, 32, 32))
    assert isinstance(parts, DistillationParts) and parts.num_classes == 10 and parts.task.name == "classification"
    assert list(parts.distiller.methods) == ["ce", "kd", "fam"]
    assert isinstance(parts.teacher, FrozenTeacher) and parts.teacher.model is teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(module is teacher for module in parts.distiller.modules())  # never trained, synced or checkpointed
    # fam built its stage modules from the probed shapes: they are trainable parameters of the distiller
    assert parts.distiller.trainable_method_parameters() > 0
    assert parts.teacher.layers and parts.distiller.student.layers  # features requested by fam are hooked
    parts.teacher.train()
    assert not parts.teacher.training and not teacher.training


def test_a_training_step_through_the_parts():
    parts = build_distillation(tiny("resnet8", 0), tiny("resnet8", 1), {"figkd": {}}, sample_input=torch.zeros(2, 3, 16, 16))
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    teacher_output = parts.teacher(images)
    assert not teacher_output.logits.requires_grad
    output = parts.distiller.train()(images, labels, teacher_output.logits, teacher_output.features)
    assert set(output.loss_terms) == {"loss_ce", "loss_figkd"}
    output.loss.backward()
    assert parts.student.fc.weight.grad is not None


def test_label_only_methods_need_no_teacher_and_built_methods_are_accepted():
    methods = build_methods({"ce": {}})
    parts = build_distillation(tiny("resnet8", 0), None, methods, sample_input=torch.zeros(1, 3, 16, 16))
    assert parts.teacher is None and parts.methods == methods
    with pytest.raises(ConfigError, match="kd need a teacher"):
        build_distillation(tiny("resnet8", 0), None, {"kd": {}})


def test_a_failed_probe_gives_the_networks_back_without_hooks():
    student = tiny("test_vit", 0, img_size=32, dynamic_img_size=False)
    with pytest.raises(ModelError, match=r"student \(VisionTransformer\) cannot take inputs of shape \(3, 16, 16\)"):
        build_distillation(student, tiny("test_vit", 1, img_size=32), {"fam": {}}, sample_input=torch.zeros(1, 3, 16, 16))
    assert not any(module._forward_hooks for module in student.modules())


def test_the_trainer_takes_built_parts(tmp_path):
    parts = build_distillation(tiny("resnet8", 0), tiny("resnet8", 1), {"kd": {}}, sample_input=torch.zeros(1, 3, 16, 16))
    args = DistillationConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", methods={"fam": {}})
    trainer = DistillationTrainer(model=parts, args=args)
    assert trainer.model is parts.distiller and list(trainer.model.methods) == ["ce", "kd"]  # args.methods unused
    assert trainer.teacher is not None and trainer.student is parts.student
    with pytest.raises(ConfigError, match="pass the teacher to build_distillation"):
        DistillationTrainer(model=parts, teacher=tiny("resnet8", 2), args=args)


def test_the_factory_is_the_only_place_that_builds_a_distiller():
    builders = []
    for path in [*(REPO / "hf_freqkd").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Distiller":
                builders.append(str(path.relative_to(REPO)))
    assert builders == ["hf_freqkd/factory.py"]


def test_a_task_chosen_by_name_is_the_runs_task_when_it_extends_the_students():
    from hf_freqkd.tasks.classification import ClassificationTask

    class BalancedClassification(ClassificationTask):
        name = "balanced_classification_test_only"

        def matches(self, model):
            return False  # chosen by name only

        def applies(self, method_class):
            return "classification" in method_class.tasks

    student, teacher = timm.create_model("resnet8", num_classes=4), timm.create_model("resnet8", num_classes=4)
    parts = build_distillation(student, teacher, {"kd": {}}, torch.zeros(1, 3, 16, 16), task=BalancedClassification())
    assert parts.task.name == "balanced_classification_test_only"
    assert build_distillation(student, teacher, {"kd": {}}, torch.zeros(1, 3, 16, 16)).task.name == "classification"


def test_a_task_the_student_cannot_solve_is_refused_naming_both():
    student = timm.create_model("resnet8", num_classes=4)
    with pytest.raises(ModelError, match=r"task 'segmentation' needs a segmentation network.*set task: classification"):
        build_distillation(student, None, {"ce": {}}, torch.zeros(1, 3, 16, 16), task="segmentation")

"""Activation checkpointing of the student (the Trainer's gradient_checkpointing): the same loss and
gradients as without it, hooked features keep their gradient, the teacher is never checkpointed."""

from __future__ import annotations

import pytest
import timm
import torch

import hf_freqkd  # noqa: F401  registers the CIFAR zoo and segfpn
from hf_freqkd.config import DistillationConfig
from hf_freqkd.errors import ConfigError, ModelError
from hf_freqkd.factory import build_distillation
from hf_freqkd.models.activation_checkpointing import checkpointed_module, enable_activation_checkpointing, is_activation_checkpointing


def loss_and_gradients(parts, images, labels):
    distiller = parts.distiller.train()
    distiller.zero_grad()
    teacher = parts.teacher(images)
    loss = distiller(images, labels, teacher.logits, teacher.features).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in distiller.named_parameters() if p.grad is not None}


def assert_same_step_with_checkpointing(parts, images, labels):
    loss, gradients = loss_and_gradients(parts, images, labels)
    parts.distiller.activation_checkpointing_enable()  # what the Trainer calls
    assert is_activation_checkpointing(parts.student)
    assert not is_activation_checkpointing(parts.teacher.model)
    checkpointed_loss, checkpointed_gradients = loss_and_gradients(parts, images, labels)
    torch.testing.assert_close(checkpointed_loss, loss)
    assert set(checkpointed_gradients) == set(gradients)
    # Every feature term reaches the student: a hooked block inside a checkpoint keeps its gradient.
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, msg=name)
    # The blocks run again in the backward pass; their recomputed outputs are not kept afterwards.
    assert parts.distiller.student._captured == {}


def test_a_timm_vit_student_checkpoints_its_blocks_with_the_same_gradients():
    student = timm.create_model("test_vit", img_size=32, num_classes=10)
    teacher = timm.create_model("test_vit", img_size=32, num_classes=10)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    parts = build_distillation(student, teacher, {"ce": {}, "kd": {}, "feature_mse": {}, "fam": {}}, sample_input=images[:1])
    assert not student.grad_checkpointing
    assert_same_step_with_checkpointing(parts, images, labels)
    assert student.grad_checkpointing and not teacher.grad_checkpointing


def test_a_transformers_student_checkpoints_its_layers_with_the_same_gradients():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=10)
    student, teacher = ViTForImageClassification(config), ViTForImageClassification(config)
    student.config.hidden_dropout_prob = student.config.attention_probs_dropout_prob = 0.0
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    parts = build_distillation(student, teacher, {"ce": {}, "kd": {}, "feature_mse": {}}, sample_input=images[:1])
    assert_same_step_with_checkpointing(parts, images, labels)
    assert student.is_activation_checkpointing and not teacher.is_activation_checkpointing


def test_a_segmentation_network_checkpoints_its_backbone():
    model = timm.create_model("segfpn", backbone="resnet10t", num_classes=3, head_channels=16, out_indices=[2, 3, 4])
    assert checkpointed_module(model) is model.backbone
    enable_activation_checkpointing(model)
    assert model.backbone.grad_checkpointing


def test_a_student_without_checkpointing_is_refused_by_the_trainer_before_anything_is_written(tmp_path):
    from hf_freqkd.run import prepare_run

    from ..helpers import tiny_run_config

    with pytest.raises(ModelError, match="CifarResNet has no activation checkpointing"):
        prepare_run("distill", defaults=tiny_run_config(tmp_path / "run", gradient_checkpointing=True))
    assert not (tmp_path / "run").exists()


def test_options_checkpointing_cannot_honour_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="use_reentrant = true is not supported"):
        DistillationConfig(output_dir=str(tmp_path), gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ConfigError, match="every_n_layers apply to transformers students only"):
        enable_activation_checkpointing(timm.create_model("test_vit"), {"every_n_layers": 2})


def test_the_trainer_checkpoints_the_student_and_never_the_teacher(tmp_path):
    from hf_freqkd.run import prepare_run

    from ..helpers import tiny_run_config

    config = tiny_run_config(
        tmp_path / "run", student_model="test_vit", student_model_kwargs={"img_size": 8, "patch_size": 4}, teacher_model="test_vit",
        teacher_model_kwargs={"img_size": 8, "patch_size": 4}, methods={"ce": {}, "kd": {}}, gradient_checkpointing=True,
    )
    trainer, *_ = prepare_run("distill", defaults=config)
    trainer.train()
    assert trainer.student.grad_checkpointing and not trainer.teacher.model.grad_checkpointing
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()

"""The launcher's choices checked before anything runs, the DeepSpeed teacher's config, the accelerate
configs, and the skeleton a sharded run exports its gathered student through (launches: tests/test_fsdp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import hf_freqkd  # noqa: F401
from hf_freqkd.config import DistillationConfig
from hf_freqkd.errors import ConfigError
from hf_freqkd.training.distributed import StudentSkeleton, student_state, teacher_deepspeed_config

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def test_fsdp1_on_the_cpu_is_refused_naming_fsdp_version_2(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="launch with --fsdp_version 2"):
        DistillationConfig(output_dir=str(tmp_path / "run"), use_cpu=True)


def test_fsdp2_and_launched_processes_without_an_accelerator_train_on_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert DistillationConfig(output_dir=str(tmp_path / "run")).use_cpu


def test_a_sharded_teacher_needs_fsdp2(tmp_path):
    with pytest.raises(ConfigError, match="teacher_sharding = true shards the teacher with FSDP2"):
        DistillationConfig(output_dir=str(tmp_path / "run"), teacher_sharding=True)


def test_deepspeed_is_refused_where_it_cannot_run(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed.*FSDP2"):
        DistillationConfig(output_dir=str(tmp_path / "run"))


def test_the_deepspeed_teacher_is_an_inference_engine_partitioned_only_under_zero3():
    training = {"zero_optimization": {"stage": 2, "overlap_comm": True}, "optimizer": {"type": "AdamW"}, "bf16": {"enabled": True},
                "train_micro_batch_size_per_gpu": 8}
    teacher = teacher_deepspeed_config(training)
    assert teacher["zero_optimization"] == {"stage": 0} and "optimizer" not in teacher and teacher["bf16"] == {"enabled": True}
    assert training["zero_optimization"]["stage"] == 2 and "optimizer" in training  # the run's own config is untouched
    assert teacher_deepspeed_config({"zero_optimization": {"stage": 3}})["zero_optimization"] == {"stage": 3}


@pytest.mark.parametrize("name", ["ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"])
def test_the_accelerate_configs_are_accelerate_configs(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert config.num_processes == 2
    if name == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2


def test_a_skeleton_takes_the_gathered_weights_and_keeps_non_persistent_buffers():
    student = timm.create_model("test_vit", img_size=32, num_classes=10)
    skeleton = StudentSkeleton(student)
    assert all(parameter.is_meta for parameter in skeleton.module.parameters())  # no second copy of the weights
    trained = {f"student.model.{key}": value + 1 for key, value in student.state_dict().items()}
    trained["methods.kd.unused"] = torch.zeros(1)
    rebuilt = skeleton.filled(student_state(trained))
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, student.state_dict()[key] + 1), key
    images = torch.randn(2, 3, 32, 32)
    student.load_state_dict({key: value + 1 for key, value in student.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(images), student.eval()(images))


def test_scalar_parameters_are_stored_with_one_element_for_fsdp2_and_exported_as_they_were():
    from torch import nn

    from hf_freqkd.training.distributed import make_scalars_shardable

    class WithScalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)
            self.gamma = nn.Parameter(torch.tensor(0.5))

        def forward(self, x):
            return self.gamma * self.linear(x)

    model = WithScalar()
    skeleton = StudentSkeleton(model)
    x = torch.randn(4, 3)
    expected = model(x)
    assert make_scalars_shardable(model) == ["gamma"]
    assert all(parameter.dim() >= 1 for parameter in model.parameters())
    assert model.gamma.shape == () and torch.equal(model(x), expected)
    model(x).sum().backward()
    assert model.parametrizations.gamma.original.grad.shape == (1,)
    rebuilt = skeleton.filled(model.state_dict())
    assert rebuilt.gamma.shape == () and torch.equal(rebuilt(x), expected)

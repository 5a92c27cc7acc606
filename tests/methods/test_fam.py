"""``fam`` / ``fam_l2l`` through the real DistillationTrainer: the modules train, checkpoint and stay
out of exports, gradients never reach the teacher, outputs take the teacher's stage shapes for CNN,
ViT and mixed pairs, and bad setups fail when the trainer is built."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from safetensors.torch import load_file

from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.export import export_student
from hf_freqkd.layers.frequency_attention import FrequencyAttention, LocalSelfAttention
from hf_freqkd.methods import ModelOutputs


def input_config(size: int) -> dict:
    return {"input_size": (3, size, size), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def formatted(split, rows: int, size: int = 16):
    return with_image_transform(split.select(range(rows)), "image", "label", input_config(size), training=False, augmentation="none")


def model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10, **({"img_size": 32} if "vit" in name else {}))


def config(tmp_path, methods, **overrides) -> DistillationConfig:
    values = dict(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=2, learning_rate=0.05, optim="sgd",
        lr_scheduler_type="constant", logging_steps=1, eval_strategy="no", save_strategy="no", report_to="none",
        use_cpu=True, seed=0, disable_tqdm=True, methods=methods,
    )
    values.update(overrides)
    return DistillationConfig(**values)


def trainer_for(tmp_path, digits, methods, student="resnet8", teacher="resnet14", size=16, rows=16, **overrides):
    return DistillationTrainer(
        model=model(student, 1), teacher=model(teacher, 2), args=config(tmp_path, methods, **overrides),
        train_dataset=formatted(digits["train"], rows, size),
    )


def batch_outputs(trainer, rows: int = 4):
    """Student outputs (with gradients) and teacher outputs on the first training rows."""
    pixels = torch.stack([trainer.train_dataset[i]["pixel_values"] for i in range(rows)])
    trainer.model.train()
    return trainer.model.student(pixels), trainer.teacher(pixels)


# ----------------------------------------------------------------------------------------------
# Training through the trainer


def test_fam_modules_train_checkpoint_are_logged_and_stay_out_of_the_export(tmp_path, digits, caplog):
    teacher = model("resnet14", 2)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = config(tmp_path, {"fam": {"weight": 0.8}}, save_strategy="steps", save_steps=2)
    with caplog.at_level(logging.INFO, logger="hf_freqkd"):
        trainer = DistillationTrainer(model=model("resnet8", 1), teacher=teacher, args=args, train_dataset=formatted(digits["train"], 16))
    method = trainer.model.methods["fam"]
    # resnet8 -> resnet14: three stages and the pooled feature, deepest first fused by attention.
    assert len(method.stages) == 4 and method.stages[-1].fuse is None
    assert all(isinstance(stage.fuse, LocalSelfAttention) for stage in method.stages[:3])
    extra = sum(p.numel() for p in method.parameters())
    assert f"add {extra} trainable parameters" in caplog.text
    modules = [m for m in method.modules() if isinstance(m, FrequencyAttention)]
    before = {name: p.detach().clone() for name, p in method.named_parameters()}

    trainer.train()

    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in method.parameters())
    for layer in modules:  # gammas and the filter move with the first optimizer steps
        name = next(n for n, m in method.named_modules() if m is layer)
        for parameter in ("gamma_global", "gamma_local", "filter"):
            assert not torch.equal(getattr(layer, parameter), before[f"{name}.{parameter}"]), f"{name}.{parameter} did not train"
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f"teacher {key} changed"
    assert all(p.grad is None for p in teacher.parameters())
    assert all("loss_fam" in entry for entry in trainer.state.log_history if "loss" in entry)

    saved = load_file(str(tmp_path / "run" / "checkpoint-2" / "model.safetensors"))
    assert "methods.fam.stages.0.fam.filter" in saved and "methods.fam.stages.0.fuse.rel_h" in saved
    assert not any(key.startswith("teacher") for key in saved)
    exported = load_file(str(export_student(trainer.student, tmp_path / "export") / "model.safetensors"))
    assert set(exported) == set(trainer.student.state_dict())


def test_fam_l2l_trains_its_modules(tmp_path, digits):
    trainer = trainer_for(tmp_path, digits, {"fam_l2l": {}}, max_steps=1)
    method = trainer.model.methods["fam_l2l"]
    filters = [stage.fam.filter.detach().clone() for stage in method.stages]
    trainer.train()
    assert len(filters) == 3 and all(not torch.equal(s.fam.filter, f) for s, f in zip(method.stages, filters))
    assert any("loss_fam_l2l" in entry for entry in trainer.state.log_history)


@pytest.mark.parametrize("method", ["fam", "fam_l2l"])
def test_gradients_reach_student_and_modules_never_the_teacher(tmp_path, digits, method):
    trainer = trainer_for(tmp_path, digits, {method: {}})
    student, teacher = batch_outputs(trainer)
    for feature in student.features.values():
        feature.retain_grad()
    # Even teacher features that carry gradients must not receive any.
    teacher = ModelOutputs(teacher.logits, {k: v.clone().requires_grad_() for k, v in teacher.features.items()})
    loss = trainer.model.methods[method](student, teacher, None)[f"loss_{method}"]
    loss.backward()
    assert all(f.grad is None for f in teacher.features.values())
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student.features.values())
    assert all(p.grad is not None for p in trainer.model.methods[method].parameters())
    assert trainer.student.conv1.weight.grad.abs().sum() > 0


def test_reference_implementation_gives_the_same_loss_and_gradients(tmp_path, digits):
    losses, grads = [], []
    for reference in (False, True):
        trainer = trainer_for(tmp_path / str(reference), digits, {"fam": {"reference_implementation": reference}})
        student, teacher = batch_outputs(trainer)
        loss = trainer.model.methods["fam"](student, teacher, None)["loss_fam"]
        loss.backward()
        losses.append(loss.item())
        grads.append(trainer.student.conv1.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Pairing and shapes


@pytest.mark.parametrize(
    "student_name, teacher_name, size",
    [("resnet8", "resnet14", 16), ("test_vit", "test_vit", 32), ("test_vit", "resnet8", 32), ("resnet8", "test_vit", 32)],
    ids=["cnn-pair", "vit-student-and-teacher", "cnn-teacher-vit-student", "vit-teacher-cnn-student"],
)
@pytest.mark.parametrize("method", ["fam", "fam_l2l"])
def test_outputs_take_the_teacher_stage_shapes(tmp_path, digits, student_name, teacher_name, size, method):
    trainer = trainer_for(tmp_path, digits, {method: {}}, student=student_name, teacher=teacher_name, size=size, rows=4)
    distiller = trainer.model.methods[method]
    student, teacher = batch_outputs(trainer)
    outputs = distiller.stage_outputs(student, teacher)
    expected = [teacher.features[t].shape for _, t in distiller.pairs]
    if method == "fam":  # plus the pooled feature, the deepest stage
        expected.append(torch.Size((4, expected[-1][1], 1, 1)))
    assert [output.shape for output, _ in outputs] == expected
    assert [target.shape for _, target in outputs] == expected
    assert all(target.min() >= 0 for _, target in outputs)  # teacher features after ReLU


def test_vit_blocks_are_paired_evenly_and_explicit_layers_override(tmp_path, digits):
    trainer = trainer_for(tmp_path, digits, {"fam": {}}, student="test_vit", teacher="resnet8", size=32, rows=4)
    assert trainer.model.methods["fam"].pairs == [("blocks.1", "layer1"), ("blocks.3", "layer2"), ("blocks.5", "layer3")]
    explicit = {"student_layers": ["blocks.0", "blocks.4"], "teacher_layers": ["layer2", "layer3"]}
    trainer = trainer_for(tmp_path, digits, {"fam": explicit}, student="test_vit", teacher="resnet8", size=32, rows=4)
    assert trainer.model.methods["fam"].pairs == [("blocks.0", "layer2"), ("blocks.4", "layer3")]


# The deepest stage has no attention: it is the first residual (the pooled feature, else the last stage).
@pytest.mark.parametrize("pooled_stage, modules, attentions", [("loss", 4, 3), ("residual", 3, 3), ("none", 3, 2)])
def test_pooled_stage(tmp_path, digits, pooled_stage, modules, attentions):
    trainer = trainer_for(tmp_path, digits, {"fam": {"pooled_stage": pooled_stage}}, rows=4)
    method = trainer.model.methods["fam"]
    assert sum(isinstance(m, FrequencyAttention) for m in method.modules()) == modules
    assert sum(isinstance(m, LocalSelfAttention) for m in method.modules()) == attentions
    assert len(method.stage_outputs(*batch_outputs(trainer))) == modules


def test_pooled_layers_read_the_pooling_modules(tmp_path, digits):
    # WRN: global_pool follows the final BN + ReLU, unlike the mean of the raw last stage.
    options = {"student_pooled_layer": "global_pool", "teacher_pooled_layer": "global_pool"}
    trainer = trainer_for(tmp_path, digits, {"fam": options}, student="wrn_16_1", teacher="wrn_16_2", rows=4)
    with torch.no_grad():  # an untrained final BN is nearly the identity; make it matter
        trainer.teacher.model.bn1.bias.fill_(1.0)
    student, teacher = batch_outputs(trainer)
    method = trainer.model.methods["fam"]
    target = method.stage_outputs(student, teacher)[-1][1]
    torch.testing.assert_close(target, teacher.features["global_pool"][:, :, None, None])
    assert not torch.allclose(target, torch.relu(teacher.features["block3"]).mean((2, 3), keepdim=True))


def test_teacher_relu_option():
    from hf_freqkd.methods.fam import FAMReviewOptions, FrequencyAttentionReview

    feature = torch.tensor([-1.0, 2.0])
    assert FrequencyAttentionReview().teacher_target(feature).tolist() == [0.0, 2.0]
    assert FrequencyAttentionReview(FAMReviewOptions(teacher_relu=False)).teacher_target(feature).tolist() == [-1.0, 2.0]


# ----------------------------------------------------------------------------------------------
# Bad input: errors when the trainer is built, before anything is written


@pytest.mark.parametrize(
    "student, teacher, options, message",
    [
        ("resnet8", "resnet14", {"student_layers": ["layer1", "nope", "layer3"]},
         r"layer 'nope' does not exist in CifarResNet; stage layers: layer1, layer2, layer3"),
        ("resnet8", "test_resnet", {}, r"fam: the student has 3 stage layers \(layer1, layer2, layer3\) and the teacher 5"),
        ("resnet8", "resnet14", {"student_layers": ["layer1", "layer2", "global_pool"]},
         r"student feature 'global_pool' has shape \(1, 64\), not a \(B, C, H, W\) map, so it cannot be resized to the 4x4"),
        ("resnet8", "resnet14", {"student_pooled_layer": "layer3"}, r"student_pooled_layer 'layer3' outputs \(1, 64, 4, 4\)"),
        ("resnet8", "resnet14", {"high_pass_ratio": 1.5}, r"option 'high_pass_ratio' = 1.5 is invalid: expected a number in \[0, 1\]"),
        ("resnet8", "resnet14", {"mid_channels": 0}, r"option 'mid_channels' = 0 is invalid: expected an integer >= 1"),
        ("resnet8", "resnet14", {"pooled_stage": "all"}, r"option 'pooled_stage' = 'all' is invalid: expected one of 'loss'"),
        ("resnet8", "resnet14", {"student_layers": []}, r"option 'student_layers' = \[\] is invalid"),
        ("resnet8", "resnet14", {"pooled_stage": "none", "student_pooled_layer": "global_pool"},
         r"option 'student_pooled_layer' = 'global_pool' is invalid: expected null when pooled_stage is 'none'"),
    ],
    ids=["missing-layer", "stage-count", "not-a-map", "pooled-not-pooled", "ratio", "mid", "pooled-stage", "empty", "pooled-none"],
)
def test_bad_setups_fail_when_the_trainer_is_built(tmp_path, digits, student, teacher, options, message):
    with pytest.raises(ValueError, match=message):
        trainer_for(tmp_path, digits, {"fam": options}, student=student, teacher=teacher, rows=4)
    assert not (tmp_path / "run").exists()

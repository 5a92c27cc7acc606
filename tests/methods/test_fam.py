"""``fam`` / ``fam_l2l``: the modules train through the real DistillationTrainer, checkpoint and stay
out of exports, gradients never reach the teacher, outputs take the teacher's stage shapes for CNN,
ViT and mixed pairs, the knowledge-review options do what they say, and bad setups fail when the
trainer is built."""

from __future__ import annotations

import copy
import logging

import pytest
import timm
import torch
from safetensors.torch import load_file

from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.export import export_student
from hf_freqkd.layers.frequency_attention import FrequencyAttention, LocalSelfAttention
from hf_freqkd.methods import LogitsAndFeatures
from hf_freqkd.methods.fam import FAMReviewOptions, FrequencyAttentionReview
from hf_freqkd.types import BackboneInfo

BOTH = {"fam": {"weight": 0.8}, "fam_l2l": {}}


def input_config(size: int) -> dict:
    return {"input_size": (3, size, size), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10, **({"img_size": 32} if "vit" in name else {}))


def trainer_for(tmp_path, digits, methods, student="resnet8", teacher="resnet8", size=16, rows=8, teacher_model=None, **overrides):
    values = dict(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=1, learning_rate=0.05, optim="sgd",
        lr_scheduler_type="constant", logging_steps=1, eval_strategy="no", save_strategy="no", report_to="none",
        use_cpu=True, seed=0, disable_tqdm=True, methods=methods,
    )
    values.update(overrides)
    data = with_image_transform(digits["train"].select(range(rows)), "image", "label", input_config(size), training=False, augmentation="none")
    return DistillationTrainer(
        model=model(student, 1), teacher=teacher_model or model(teacher, 2), args=DistillationConfig(**values), train_dataset=data
    )


def batch_outputs(trainer, rows: int = 2):
    """Student outputs (with gradients) and teacher outputs on the first training rows."""
    pixels = torch.stack([trainer.train_dataset[i]["pixel_values"] for i in range(rows)])
    trainer.model.train()
    return trainer.model.student(pixels), trainer.teacher(pixels)


# ----------------------------------------------------------------------------------------------
# Through the trainer


def test_modules_train_checkpoint_are_logged_and_stay_out_of_the_export(tmp_path, digits, caplog):
    teacher = model("resnet8", 2)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="hf_freqkd"):
        trainer = trainer_for(tmp_path, digits, BOTH, teacher_model=teacher, save_strategy="steps", save_steps=1)
    methods = trainer.model.methods
    # resnet8 has three stages; fam adds the pooled feature as the deepest one, which fuses nothing.
    assert [stage.fuse is not None for stage in methods["fam"].stages] == [True, True, True, False]
    assert len(methods["fam_l2l"].stages) == 3
    extra = sum(p.numel() for p in methods.parameters())
    assert f"add {extra} trainable parameters" in caplog.text
    before = {name: p.detach().clone() for name, p in methods.named_parameters()}

    trainer.train()

    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in methods.parameters())
    modules = {n: m for n, m in methods.named_modules() if isinstance(m, FrequencyAttention)}
    assert len(modules) == 7
    for name in modules:  # gammas and filters move with the first optimizer step
        for parameter in ("gamma_global", "gamma_local", "filter"):
            key = f"{name}.{parameter}"
            assert not torch.equal(methods.get_parameter(key), before[key]), f"{key} did not train"
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f"teacher {key} changed"
    assert all(p.grad is None for p in teacher.parameters())
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(entry["loss_fam"] > 0 and entry["loss_fam_l2l"] > 0 for entry in logged)

    saved = load_file(str(tmp_path / "run" / "checkpoint-1" / "model.safetensors"))
    assert {"methods.fam.stages.0.fam.filter", "methods.fam.stages.0.fuse.rel_h", "methods.fam_l2l.stages.2.fam.filter"} <= set(saved)
    assert all(key.startswith(("student.", "methods.")) for key in saved)
    exported = load_file(str(export_student(trainer.student, tmp_path / "export") / "model.safetensors"))
    assert set(exported) == set(trainer.student.state_dict())


def test_gradients_reach_student_and_modules_never_the_teacher(tmp_path, digits):
    trainer = trainer_for(tmp_path, digits, BOTH)
    student, teacher = batch_outputs(trainer)
    for feature in student.features.values():
        feature.retain_grad()
    # Even teacher features that carry gradients must not receive any.
    teacher = LogitsAndFeatures(teacher.logits, {k: v.clone().requires_grad_() for k, v in teacher.features.items()})
    methods = trainer.model.methods
    (methods["fam"](student, teacher, None)["loss_fam"] + methods["fam_l2l"](student, teacher, None)["loss_fam_l2l"]).backward()
    assert all(f.grad is None for f in teacher.features.values())
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student.features.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in methods.parameters())
    assert trainer.student.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "student_name, teacher_name, size, pairs",
    [
        ("resnet8", "resnet14", 16, [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]),
        ("test_vit", "test_vit", 32, [(f"blocks.{i}", f"blocks.{i}") for i in range(6)]),
        ("test_vit", "resnet8", 32, [("blocks.1", "layer1"), ("blocks.3", "layer2"), ("blocks.5", "layer3")]),
        ("resnet8", "test_vit", 32, [("layer1", "blocks.1"), ("layer2", "blocks.3"), ("layer3", "blocks.5")]),
    ],
    ids=["cnn-pair", "vit-student-and-teacher", "cnn-teacher-vit-student", "vit-teacher-cnn-student"],
)
def test_outputs_take_the_teacher_stage_shapes(tmp_path, digits, student_name, teacher_name, size, pairs):
    trainer = trainer_for(tmp_path, digits, BOTH, student=student_name, teacher=teacher_name, size=size, rows=2)
    student, teacher = batch_outputs(trainer)
    for name in ("fam", "fam_l2l"):
        method = trainer.model.methods[name]
        assert method.pairs == pairs
        outputs = method.stage_outputs(student, teacher)
        expected = [teacher.features[t].shape for _, t in pairs]
        if name == "fam":  # plus the pooled feature, the deepest stage
            expected.append(torch.Size((2, expected[-1][1], 1, 1)))
        assert [output.shape for output, _ in outputs] == expected
        assert [target.shape for _, target in outputs] == expected
        assert all(target.min() >= 0 for _, target in outputs)  # teacher features after ReLU


def test_explicit_layers_override_the_pairing(tmp_path, digits):
    explicit = {"student_layers": ["blocks.0", "blocks.4"], "teacher_layers": ["layer2", "layer3"]}
    trainer = trainer_for(tmp_path, digits, {"fam": explicit}, student="test_vit", teacher="resnet8", size=32, rows=2)
    assert trainer.model.methods["fam"].pairs == [("blocks.0", "layer2"), ("blocks.4", "layer3")]


# ----------------------------------------------------------------------------------------------
# The method on its own: fake features of known shapes, no networks

CNN = BackboneInfo(("layer1", "layer2", "layer3"))
STUDENT_SHAPES = {"layer1": (1, 4, 8, 8), "layer2": (1, 6, 4, 4), "layer3": (1, 8, 2, 2), "global_pool": (1, 8)}
TEACHER_SHAPES = {"layer1": (1, 5, 8, 8), "layer2": (1, 7, 4, 4), "layer3": (1, 9, 2, 2), "global_pool": (1, 9)}


def built(**options) -> FrequencyAttentionReview:
    torch.manual_seed(0)
    method = FrequencyAttentionReview(FAMReviewOptions(**options))
    method.feature_request(CNN, CNN)
    method.build({k: torch.Size(v) for k, v in STUDENT_SHAPES.items()}, {k: torch.Size(v) for k, v in TEACHER_SHAPES.items()}, 10)
    return method


def fake_outputs(shapes: dict, batch: int = 3) -> LogitsAndFeatures:
    return LogitsAndFeatures(torch.zeros(batch, 10), {k: torch.randn(batch, *v[1:]) for k, v in shapes.items()})


# The deepest stage has no attention: it is the first residual (the pooled feature, else the last stage).
@pytest.mark.parametrize("pooled_stage, modules, attentions", [("loss", 4, 3), ("residual", 3, 3), ("none", 3, 2)])
def test_pooled_stage(pooled_stage, modules, attentions):
    method = built(pooled_stage=pooled_stage)
    assert sum(isinstance(m, FrequencyAttention) for m in method.modules()) == modules
    assert sum(isinstance(m, LocalSelfAttention) for m in method.modules()) == attentions
    outputs = method.stage_outputs(fake_outputs(STUDENT_SHAPES), fake_outputs(TEACHER_SHAPES))
    assert [tuple(o.shape) for o, _ in outputs] == [(3, 5, 8, 8), (3, 7, 4, 4), (3, 9, 2, 2), (3, 9, 1, 1)][:modules]


def test_pooled_features_are_the_mean_of_the_deepest_stage_or_the_named_layers():
    student, teacher = fake_outputs(STUDENT_SHAPES), fake_outputs(TEACHER_SHAPES)
    target = built().stage_outputs(student, teacher)[-1][1]
    torch.testing.assert_close(target, torch.relu(teacher.features["layer3"]).mean((2, 3), keepdim=True))
    # With named layers (global_pool: after the WRNs' final BN + ReLU) the pooled features are read.
    method = built(student_pooled_layer="global_pool", teacher_pooled_layer="global_pool")
    target = method.stage_outputs(student, teacher)[-1][1]
    torch.testing.assert_close(target, torch.relu(teacher.features["global_pool"])[:, :, None, None])
    assert method.feature_request(CNN, CNN).student == ("layer1", "layer2", "layer3", "global_pool")


def test_teacher_relu_option():
    student, teacher = fake_outputs(STUDENT_SHAPES), fake_outputs(TEACHER_SHAPES)
    targets = [t for _, t in built(teacher_relu=False).stage_outputs(student, teacher)]
    torch.testing.assert_close(targets[0], teacher.features["layer1"])
    assert targets[0].min() < 0
    assert all(t.min() >= 0 for _, t in built().stage_outputs(student, teacher))


def test_mid_channels_and_adapters():
    # Default: each stage's student width; a residual of another width is adapted by 1x1 conv + BN + ReLU.
    method = built()
    assert [stage.project for stage in method.stages] == [None] * 4
    assert [stage.project_residual is not None for stage in method.stages] == [True, True, False, False]
    method = built(mid_channels=12)
    assert all(stage.project[0].out_channels == 12 for stage in method.stages)
    assert [stage.fam.in_channels for stage in method.stages] == [12] * 4


def test_reference_implementation_computes_the_same_loss_and_gradients():
    student, teacher = fake_outputs(STUDENT_SHAPES), fake_outputs(TEACHER_SHAPES)
    for feature in student.features.values():
        feature.requires_grad_()
    reference = built(reference_implementation=True)
    assert all(m.reference for m in reference.modules() if isinstance(m, (FrequencyAttention, LocalSelfAttention)))
    fast = copy.deepcopy(reference)
    for module in fast.modules():
        if isinstance(module, (FrequencyAttention, LocalSelfAttention)):
            module.reference = False
    results = []
    for method in (fast, reference):
        loss = method(student, teacher, None)["loss_fam"]
        grads = torch.autograd.grad(loss, [student.features["layer1"], *method.parameters()])
        results.append((loss, grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for got, expected in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Bad input: errors when the trainer is built, before anything is written


@pytest.mark.parametrize(
    "teacher, options, message",
    [
        ("resnet8", {"student_layers": ["layer1", "nope", "layer3"]},
         r"layer 'nope' does not exist in CifarResNet; stage layers: layer1, layer2, layer3"),
        ("test_resnet", {}, r"fam: the student has 3 stage layers \(layer1, layer2, layer3\) and the teacher 5"),
        ("resnet8", {"student_layers": ["layer1", "layer2", "global_pool"]},
         r"student feature 'global_pool' has shape \(1, 64\), not a \(B, C, H, W\) map, so it cannot be resized to the 4x4"),
        ("resnet8", {"student_pooled_layer": "layer3"}, r"student_pooled_layer 'layer3' outputs \(1, 64, 4, 4\)"),
        ("resnet8", {"high_pass_ratio": 1.5}, r"option 'high_pass_ratio' = 1.5 is invalid: expected a number in \[0, 1\]"),
        ("resnet8", {"mid_channels": 0}, r"option 'mid_channels' = 0 is invalid: expected an integer >= 1"),
        ("resnet8", {"pooled_stage": "all"}, r"option 'pooled_stage' = 'all' is invalid: expected one of 'loss'"),
        ("resnet8", {"student_layers": []}, r"option 'student_layers' = \[\] is invalid"),
        ("resnet8", {"pooled_stage": "none", "student_pooled_layer": "global_pool"},
         r"option 'student_pooled_layer' = 'global_pool' is invalid: expected null when pooled_stage is 'none'"),
    ],
    ids=["missing-layer", "stage-count", "not-a-map", "pooled-not-pooled", "ratio", "mid", "pooled-stage", "empty", "pooled-none"],
)
def test_bad_setups_fail_when_the_trainer_is_built(tmp_path, digits, teacher, options, message):
    with pytest.raises(ValueError, match=message):
        trainer_for(tmp_path, digits, {"fam": options}, teacher=teacher, rows=2)
    assert not (tmp_path / "run").exists()

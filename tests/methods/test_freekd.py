"""``freekd`` (stage 2): teacher-only masks shared by both sides, frozen prompts, trainable and
checkpointed adapters, every student family, and bad prompts / layers / options caught at build."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.export import export_student
from hf_freqkd.frequency import wavelet_decompose
from hf_freqkd.layers.frequency_prompts import band_masks, save_prompts
from hf_freqkd.types import LogitsAndFeatures
from hf_freqkd.methods.freekd import FreeKDOptions, resolve_layer_pairs
from hf_freqkd.models import backbone_info

TEACHER_LAYER = "layer2"  # test_resnet: 48 channels, stride 8
TEACHER_WIDTH = 48


def input_config(size: int) -> dict:
    return {"input_size": (3, size, size), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def formatted(digits, rows: int = 16, size: int = 32):
    data = digits["train"].select(range(rows))
    return with_image_transform(data, "image", "label", input_config(size), training=False, augmentation="none")


def model(name: str, seed: int, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10, **kwargs)


def teacher():
    return model("test_resnet", seed=1)


@pytest.fixture
def prompts_file(tmp_path):
    generator = torch.Generator().manual_seed(0)
    values = {TEACHER_LAYER: torch.randn(4, 2, TEACHER_WIDTH, generator=generator) * 0.05}
    return str(save_prompts(tmp_path / "prompts.safetensors", values, wavelet="haar", mode="zero", levels=3))


def config(tmp_path, methods, **overrides) -> DistillationConfig:
    values = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,
        max_steps=1,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        methods=methods,
    )
    values.update(overrides)
    return DistillationConfig(**values)


def freekd(prompts_path, **options):
    return {"freekd": {"prompts_path": prompts_path, "teacher_layers": [TEACHER_LAYER], **options}}


# ----------------------------------------------------------------------------------------------
# One step for each student family, tiny images, through the real trainer

STUDENTS = {
    "resnet": (lambda: model("resnet8", seed=2), 32),
    "vit": (lambda: model("test_vit", seed=2, img_size=32), 32),
    "dinov2": (lambda: model("vit_small_patch14_dinov2", seed=2, img_size=28, embed_dim=32, depth=2, num_heads=2), 28),
    "sam": (
        lambda: model(
            "samvit_base_patch16", seed=2, img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], window_size=2
        ),
        64,
    ),
}


@pytest.mark.parametrize("family", list(STUDENTS))
def test_one_training_step_for_each_student_family(family, tmp_path, digits, prompts_file):
    build, size = STUDENTS[family]
    trainer = DistillationTrainer(
        model=build(), teacher=teacher(), args=config(tmp_path, freekd(prompts_file)), train_dataset=formatted(digits, 8, size)
    )
    method = trainer.model.methods["freekd"]
    (student_layer, teacher_layer), = method.pairs
    assert teacher_layer == TEACHER_LAYER and student_layer == backbone_info(trainer.student).stage_layers[-1]
    adapter_before = method.adapters[0].weight.detach().clone()
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss_freekd" in entry]
    assert len(logged) == 1 and math.isfinite(logged[0]["loss_freekd"]) and logged[0]["loss_freekd"] > 0
    assert not torch.equal(method.adapters[0].weight, adapter_before)


def test_prompts_frozen_adapters_trained_and_checkpointed_nothing_exported(tmp_path, digits, prompts_file):
    the_teacher = teacher()
    teacher_before = {name: p.detach().clone() for name, p in the_teacher.named_parameters()}
    args = config(tmp_path, freekd(prompts_file), max_steps=2, save_strategy="steps", save_steps=2)
    trainer = DistillationTrainer(model=model("resnet8", seed=2), teacher=the_teacher, args=args, train_dataset=formatted(digits, 16))
    method = trainer.model.methods["freekd"]
    prompts = method.prompts.prompt(TEACHER_LAYER)
    saved_prompts = load_file(prompts_file)[TEACHER_LAYER]
    trainer.train()

    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(method.adapters[0].weight) in optimised
    assert id(prompts) not in optimised and not prompts.requires_grad and prompts.grad is None
    assert torch.equal(prompts, saved_prompts)
    for name, p in the_teacher.named_parameters():
        assert torch.equal(p, teacher_before[name]) and p.grad is None

    checkpoint = load_file(str(tmp_path / "run" / "checkpoint-2" / "model.safetensors"))
    assert "methods.freekd.adapters.0.weight" in checkpoint
    assert torch.equal(checkpoint["methods.freekd.prompts.prompt_0"], saved_prompts)

    exported = load_file(str(export_student(trainer.student, tmp_path / "export") / "model.safetensors"))
    assert set(exported) == set(trainer.student.state_dict())
    assert not any("adapter" in key or "prompt" in key for key in exported)


def test_resuming_restores_the_prompts_the_run_started_with(tmp_path, digits, prompts_file):
    started_with = load_file(prompts_file)[TEACHER_LAYER]
    args = config(tmp_path, freekd(prompts_file), max_steps=2, save_strategy="steps", save_steps=1)
    DistillationTrainer(model=model("resnet8", seed=2), teacher=teacher(), args=args, train_dataset=formatted(digits, 8)).train()
    save_prompts(prompts_file, {TEACHER_LAYER: torch.randn(4, 2, TEACHER_WIDTH)}, wavelet="haar", mode="zero", levels=3)  # re-fitted
    args = config(tmp_path, freekd(prompts_file), max_steps=2, save_strategy="no")  # the same run, resumed at step 1
    trainer = DistillationTrainer(model=model("resnet8", seed=2), teacher=teacher(), args=args, train_dataset=formatted(digits, 8))
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert trainer.state.global_step == 2
    assert torch.equal(trainer.model.methods["freekd"].prompts.prompt(TEACHER_LAYER), started_with)


def test_masks_come_from_the_teacher_alone_and_no_gradient_reaches_teacher_or_prompts(tmp_path, prompts_file):
    trainer = DistillationTrainer(model=model("resnet8", seed=2), teacher=teacher(), args=config(tmp_path, freekd(prompts_file)))
    method = trainer.model.methods["freekd"]
    student_layer = method.pairs[0][0]
    student_map = torch.randn(4, 64, 8, 8, requires_grad=True)
    teacher_map = torch.randn(4, TEACHER_WIDTH, 4, 4, requires_grad=True)  # as if it could carry a gradient
    student = LogitsAndFeatures(torch.zeros(4, 10), {student_layer: student_map})
    teacher_out = LogitsAndFeatures(torch.zeros(4, 10), {TEACHER_LAYER: teacher_map})
    loss = method(student, teacher_out, torch.zeros(4, dtype=torch.long))["loss_freekd"]
    loss.backward()
    assert teacher_map.grad is None
    assert method.prompts.prompt(TEACHER_LAYER).grad is None
    assert student_map.grad is not None and student_map.grad.abs().sum() > 0

    # The same teacher mask multiplies both sides: recompute by hand.
    with torch.no_grad():
        aligned = method.adapters[0](F.interpolate(student_map, size=(4, 4), mode="bilinear", align_corners=False, antialias=True))
        student_bands, teacher_bands = wavelet_decompose(aligned), wavelet_decompose(teacher_map)
        masks = band_masks(method.prompts.prompt(TEACHER_LAYER), teacher_bands)
        for mask, band in zip(masks, teacher_bands.bands()):
            assert mask.shape == (4, 2, *band.shape[-2:]) and 0 <= mask.min() and mask.max() <= 1
        expected = sum(
            F.l1_loss(s.unsqueeze(1) * m[:, :, None, None], t.unsqueeze(1) * m[:, :, None, None])
            for s, t, m in zip(student_bands.high, teacher_bands.high, masks[1:])
        )
    torch.testing.assert_close(loss.detach(), expected)


def test_uniform_masks_low_band_and_mse_terms(tmp_path):
    options = {"masks": "uniform", "teacher_layers": [TEACHER_LAYER], "distill_low": True, "mse_weight": 5.0}
    trainer = DistillationTrainer(model=model("resnet8", seed=2), teacher=teacher(), args=config(tmp_path, {"freekd": options}))
    method = trainer.model.methods["freekd"]
    student_map, teacher_map = torch.randn(2, 64, 4, 4), torch.randn(2, TEACHER_WIDTH, 4, 4)
    terms = method(
        LogitsAndFeatures(torch.zeros(2, 10), {method.pairs[0][0]: student_map}),
        LogitsAndFeatures(torch.zeros(2, 10), {TEACHER_LAYER: teacher_map}),
        torch.zeros(2, dtype=torch.long),
    )
    aligned = method.adapters[0](student_map)
    s, t = wavelet_decompose(aligned), wavelet_decompose(teacher_map)
    expected = sum(F.l1_loss(a, b) for a, b in zip(s.high, t.high)) + F.l1_loss(s.low, t.low)
    torch.testing.assert_close(terms["loss_freekd"], expected)
    torch.testing.assert_close(terms["loss_freekd_mse"], 5.0 * F.mse_loss(aligned, teacher_map))


def test_relational_weighting_over_two_levels_trains_with_the_student(tmp_path, digits, tmp_path_factory):
    values = {layer: torch.randn(4, 2, width) * 0.05 for layer, width in (("layer1", 32), ("layer2", 48))}
    path = str(save_prompts(tmp_path / "two.safetensors", values, wavelet="haar", mode="zero", levels=3))
    methods = {"freekd": {"prompts_path": path, "teacher_layers": ["layer1", "layer2"], "student_layers": ["layer2", "layer3"], "relational": True}}
    trainer = DistillationTrainer(
        model=model("resnet8", seed=2), teacher=teacher(), args=config(tmp_path, methods), train_dataset=formatted(digits, 8)
    )
    method = trainer.model.methods["freekd"]
    # level 1 relates to the next level (48 channels), the deepest to itself
    assert method.relations[0].psi.weight.shape == (32, 48, 1, 1) and method.relations[1].psi.weight.shape == (48, 48, 1, 1)
    gate_before = method.relations[0].gate[0].weight.detach().clone()
    trainer.train()
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in method.relations.parameters()} <= optimised
    assert not torch.equal(method.relations[0].gate[0].weight, gate_before)


def test_bf16_step_runs(tmp_path, digits, prompts_file):
    trainer = DistillationTrainer(
        model=model("resnet8", seed=2), teacher=teacher(), args=config(tmp_path, freekd(prompts_file), bf16=True), train_dataset=formatted(digits, 8)
    )
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss_freekd"])


# ----------------------------------------------------------------------------------------------
# Layer pairing


def test_default_layers_are_the_deepest_stages_and_lists_pair_in_order():
    student, the_teacher = backbone_info(model("resnet8", 0)), backbone_info(teacher())
    mask_free = {"masks": "uniform"}
    assert resolve_layer_pairs(FreeKDOptions(**mask_free), student, the_teacher) == [("layer3", "layer4")]
    pairs = resolve_layer_pairs(FreeKDOptions(**mask_free, student_layers=["layer2", "layer3"]), student, the_teacher)
    # teacher stages (act1, layer1..4) evenly spaced, deepest last
    assert pairs == [("layer2", "layer1"), ("layer3", "layer4")]
    vit = backbone_info(model("test_vit", 0, img_size=32))
    assert resolve_layer_pairs(FreeKDOptions(**mask_free, teacher_layers=["layer3"]), vit, the_teacher) == [("blocks.5", "layer3")]


# ----------------------------------------------------------------------------------------------
# Bad input, caught when the trainer is built: nothing trained, nothing written


def build(tmp_path, methods):
    return DistillationTrainer(model=model("resnet8", seed=2), teacher=teacher(), args=config(tmp_path, methods))


def test_prompts_fitted_for_another_teacher_name_both_shapes(tmp_path):
    path = str(save_prompts(tmp_path / "other.safetensors", {TEACHER_LAYER: torch.zeros(4, 2, 32)}, wavelet="haar", mode="zero", levels=3))
    with pytest.raises(ValueError, match=r"shape \(4, 2, 32\) for teacher layer 'layer2'.*needs shape \(4, 2, 48\)"):
        build(tmp_path, freekd(path))
    assert not (tmp_path / "run").exists()


def test_prompts_fitted_for_another_layer_name_both_layers(tmp_path):
    path = str(save_prompts(tmp_path / "other.safetensors", {"layer3": torch.zeros(4, 2, 64)}, wavelet="haar", mode="zero", levels=3))
    with pytest.raises(ValueError, match="holds prompts for teacher layer\\(s\\) layer3 but freekd distils layer2"):
        build(tmp_path, freekd(path))


def test_prompts_fitted_with_other_levels_or_count(tmp_path, prompts_file):
    with pytest.raises(ValueError, match="fitted with levels = 3 but the options say levels = 2"):
        build(tmp_path, freekd(prompts_file, levels=2))
    with pytest.raises(ValueError, match=r"num_prompts = 6 needs shape \(4, 6, 48\)"):
        build(tmp_path, freekd(prompts_file, num_prompts=6))


def test_layer_that_does_not_exist(tmp_path, prompts_file):
    with pytest.raises(ValueError, match="layer 'layer9' does not exist in ResNet"):
        build(tmp_path, {"freekd": {"prompts_path": prompts_file, "teacher_layers": ["layer9"]}})


def test_missing_prompts_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompts file '.*nowhere.safetensors' does not exist. Fit the prompts first with `hf-freqkd fit-prompts"):
        build(tmp_path, freekd(str(tmp_path / "nowhere.safetensors")))


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "option 'prompts_path' = None is invalid: expected a prompts file path"),
        ({"masks": "uniform", "prompts_path": "p.safetensors"}, "option 'prompts_path' = 'p.safetensors' is invalid: expected null"),
        ({"masks": "uniform", "levels": 0}, "option 'levels' = 0 is invalid"),
        ({"masks": "uniform", "wavelet": "wavy"}, "option 'wavelet' = 'wavy' is invalid"),
        ({"masks": "uniform", "mode": "mirror"}, "option 'mode' = 'mirror' is invalid"),
        ({"masks": "uniform", "wavelet_backend": "fft"}, "option 'wavelet_backend' = 'fft' is invalid"),
        ({"masks": "uniform", "mse_weight": -1}, "option 'mse_weight' = -1.0 is invalid"),
        ({"masks": "uniform", "relation_temperature": 0}, "option 'relation_temperature' = 0.0 is invalid"),
        ({"masks": "uniform", "teacher_layers": []}, "option 'teacher_layers' = \\[\\] is invalid"),
        ({"masks": "uniform", "teacher_layers": ["a"], "student_layers": ["b", "c"]}, "option 'student_layers' .* as many entries as teacher_layers"),
        ({"masks": "uniform", "dissimilarity": "iou"}, "option 'dissimilarity' = 'iou' is invalid"),
        ({"masks": "uniform", "prompt_steps": 0}, "option 'prompt_steps' = 0 is invalid"),
    ],
)
def test_bad_options_are_named_when_the_config_is_built(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, {"freekd": options})

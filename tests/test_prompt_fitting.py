"""FreeKD stage 1 (``fit-prompts``): prompts inserted into the frozen teacher, trained alone, saved
with their layer names and shapes, and the task loss reported with and without them."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from transformers import TrainingArguments

from hf_freqkd.cli import main
from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.frequency import wavelet_decompose
from hf_freqkd.layers.frequency_prompts import FrequencyPrompts, band_masks, initial_prompts, load_prompts, mask_overlap
from hf_freqkd.methods.freekd import FreeKDOptions
from hf_freqkd.prompt_fitting import PromptedTeacher, fit_prompts

from .helpers import refused_before_writing

INPUT_16 = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def train_data():
    digits = load_digits_dataset()
    return with_image_transform(digits["train"].select(range(32)), "image", "label", INPUT_16, training=False, augmentation="none")


def tiny_teacher(name: str = "test_resnet", seed: int = 1, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10, **kwargs).eval()


def training_args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "fit"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=3,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def test_stage_one_trains_only_the_prompts_lowers_their_overlap_and_saves_them(tmp_path, train_data):
    teacher = tiny_teacher()
    teacher_before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    options = FreeKDOptions(prompts_path=str(tmp_path / "p.safetensors"), teacher_layers=["layer2"], prompt_steps=8)
    result = fit_prompts(teacher, train_data, options, args=training_args(tmp_path), output_path=options.prompts_path)

    assert result.steps == 8 and result.shapes == {"layer2": (4, 2, 48)}
    initial = initial_prompts(48, 2, 3, 0.01, torch.Generator().manual_seed(3))  # fit_prompts draws from the seed
    assert not torch.allclose(result.prompts["layer2"], initial, atol=1e-3), "the prompts did not change"
    assert result.dissimilarity_last < 0.9 * result.dissimilarity_first, "the mask overlap did not decrease"

    saved = load_prompts(result.path)
    assert saved.layers == ["layer2"] and torch.equal(saved.prompts["layer2"], result.prompts["layer2"])
    assert (saved.wavelet, saved.mode, saved.levels, saved.num_prompts) == ("haar", "zero", 3, 2)
    assert saved.metadata["shapes"] == '{"layer2": [4, 2, 48]}'
    assert float(saved.metadata["task_loss_with_prompts"]) == pytest.approx(result.task_loss_with_prompts)

    # The teacher is untouched and handed back without hooks; its own loss is the "without" figure.
    for name, p in teacher.named_parameters():
        assert torch.equal(p, teacher_before[name])
    assert not teacher.get_submodule("layer2")._forward_hooks
    pixels = torch.stack([row["pixel_values"] for row in train_data])
    labels = torch.tensor([row["labels"] for row in train_data])
    with torch.no_grad():
        expected = F.cross_entropy(teacher(pixels), labels).item()
    assert result.report_images == 32
    assert result.task_loss_without_prompts == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(result.task_loss_with_prompts) and result.task_loss_with_prompts != result.task_loss_without_prompts


@pytest.mark.parametrize("kind", ["jaccard", "dice"])
def test_dissimilarity_term_is_the_mask_overlap_summed_over_bands(kind):
    teacher = tiny_teacher()
    prompts = FrequencyPrompts({"layer2": torch.randn(4, 6, 48)}, trainable=True)
    prompted = PromptedTeacher(teacher, prompts, dissimilarity=kind, dissimilarity_weight=0.5)
    captured = {}
    hook = teacher.get_submodule("layer1").register_forward_hook(lambda m, a, out: captured.__setitem__("input", out))
    pixels, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    output = prompted(pixels, labels)
    hook.remove()
    prompted.remove_hooks()
    with torch.no_grad():
        bands = wavelet_decompose(teacher.get_submodule("layer2")(captured["input"]))
        expected = sum(mask_overlap(mask, kind) for mask in band_masks(prompts.prompt("layer2"), bands))
    torch.testing.assert_close(output.dissimilarity, expected)
    torch.testing.assert_close(output.loss, output.task_loss + 0.5 * expected)


TEACHERS = {
    "cnn": (lambda: tiny_teacher(), "layer2", 16),
    "vit_tokens_with_class_token": (lambda: tiny_teacher("test_vit", img_size=32), "blocks.3", 32),
    "sam_channels_last": (
        lambda: tiny_teacher("samvit_base_patch16", img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], window_size=2),
        "blocks.0",
        64,
    ),
}


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_inserted_prompts_refine_the_layer_and_train_alone(kind):
    build, layer, size = TEACHERS[kind]
    teacher = build()
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        plain = teacher(pixels)
    width = dict(teacher.named_modules())[layer]
    channels = {"cnn": 48, "vit_tokens_with_class_token": 64, "sam_channels_last": 32}[kind]
    # Zero prompts: two masks of 0.5 sum to 1, the refinement is the identity, the output unchanged.
    identity = PromptedTeacher(teacher, FrequencyPrompts({layer: torch.zeros(4, 2, channels)}, trainable=True))
    torch.testing.assert_close(identity(pixels).logits, plain, rtol=1e-4, atol=1e-4)
    identity.remove_hooks()
    assert not width._forward_hooks

    prompted = PromptedTeacher(teacher, FrequencyPrompts({layer: torch.randn(4, 2, channels)}, trainable=True))
    output = prompted(pixels, labels=torch.tensor([1, 2]))
    assert not torch.allclose(output.logits, plain, atol=1e-3), "the prompts did not reach the teacher's output"
    output.loss.backward()
    assert prompted.prompts.prompt(layer).grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    prompted.train()
    assert not teacher.training  # BatchNorm / dropout stay in eval mode
    prompted.remove_hooks()


def test_prompted_layer_that_does_not_exist(tmp_path, train_data):
    options = FreeKDOptions(prompts_path=str(tmp_path / "p.safetensors"), teacher_layers=["layer9"])
    with pytest.raises(ValueError, match="layer 'layer9' does not exist in ResNet; stage layers: act1, layer1"):
        fit_prompts(tiny_teacher(), train_data, options, args=training_args(tmp_path))


def test_hidden_state_names_of_transformers_teachers_need_module_names():
    from transformers import ViTConfig, ViTForImageClassification

    from hf_freqkd.prompt_fitting import check_teacher_layers

    vit = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match="need a module name, not 'hidden_states.2'"):
        check_teacher_layers(vit, ["hidden_states.2"])
    assert check_teacher_layers(vit, ["vit.layers.1"])


# ----------------------------------------------------------------------------------------------
# The command: one YAML config drives both stages


def write_config(tmp_path, **freekd_options):
    values = {
        "output_dir": str(tmp_path / "run"),
        "teacher_model": "test_resnet",
        "student_model": "resnet8",
        "dataset": "digits",
        "image_size": 16,
        "max_train_samples": 16,
        "max_eval_samples": 16,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "methods": {"freekd": {"prompts_path": str(tmp_path / "prompts.safetensors"), "teacher_layers": ["layer2"], **freekd_options}},
    }
    path = tmp_path / "freekd.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_fit_prompts_then_distill_through_the_cli(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["fit-prompts", "--config", str(config), "methods.freekd.prompt_steps=2", "methods.freekd.prompt_report_batches=1"]) == 0
    out = capsys.readouterr().out
    assert "prompts fitted for layer2 (4, 2, 48) in 2 steps" in out and "without prompts" in out
    assert load_prompts(tmp_path / "prompts.safetensors").layers == ["layer2"]
    assert main(["distill", "--config", str(config), "max_steps=1"]) == 0
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "methods, message",
    [
        ({"kd": {}}, "fit-prompts fits the prompts of the freekd method, but the config's methods are kd"),
        ({"freekd": {"masks": "uniform"}}, "methods.freekd.masks is 'uniform': there are no prompts to fit"),
    ],
)
def test_fit_prompts_refuses_configs_without_prompts(tmp_path, capsys, methods, message):
    config = write_config(tmp_path)
    values = yaml.safe_load(config.read_text())
    values["methods"] = methods
    config.write_text(yaml.safe_dump(values))
    assert main(["fit-prompts", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        ("dataset={tmp}/no_such_images", "dataset '{tmp}/no_such_images' does not exist"),
        ("teacher_model={tmp}/no_teacher", "model '{tmp}/no_teacher' does not exist"),
        ("methods.freekd.prompts_path={tmp}", "methods.freekd.prompts_path '{tmp}' exists and is not a file"),
    ],
)
def test_fit_prompts_refuses_missing_inputs_and_a_folder_as_prompts_file_before_writing(tmp_path, capsys, change, message):
    prompts = tmp_path / "prompts" / "p.safetensors"
    config = write_config(tmp_path, prompts_path=str(prompts))
    line = refused_before_writing(["fit-prompts", "--config", str(config), change.format(tmp=tmp_path)], capsys, prompts.parent)
    assert message.format(tmp=tmp_path) in line


def test_stage_one_shares_the_frozen_teacher_and_the_nonfinite_guard(tmp_path, train_data):
    from hf_freqkd import DistillationConfig
    from hf_freqkd.models import FrozenTeacher
    from hf_freqkd.training import NonFiniteLossError

    teacher = tiny_teacher()
    prompted = PromptedTeacher(teacher, FrequencyPrompts({"layer2": torch.zeros(4, 2, 48)}, trainable=True))
    assert isinstance(prompted.teacher, FrozenTeacher) and prompted.teacher.pass_gradients
    prompted.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    prompted.remove_hooks()

    def nan_loss(output, labels):
        return F.cross_entropy(output.logits.float(), labels) * float("nan")

    options = FreeKDOptions(prompts_path=str(tmp_path / "p.safetensors"), teacher_layers=["layer2"], prompt_steps=2)
    with pytest.raises(NonFiniteLossError, match="loss term 'task_loss' is nan at step 1"):
        fit_prompts(tiny_teacher(), train_data, options, args=training_args(tmp_path), task_loss=nan_loss)
    # nonfinite_loss: skip, from the distillation config: both updates skipped, the prompts as initialised.
    args = DistillationConfig(output_dir=str(tmp_path / "skip"), use_cpu=True, report_to="none", disable_tqdm=True, seed=3,
                              per_device_train_batch_size=8, logging_steps=1, nonfinite_loss="skip")
    result = fit_prompts(tiny_teacher(), train_data, options, args=args, task_loss=nan_loss)
    initial = initial_prompts(48, 2, 3, 0.01, torch.Generator().manual_seed(3))
    assert result.steps == 2 and torch.equal(result.prompts["layer2"], initial)

"""DistillationTrainer: the teacher stays frozen, accumulation is exact, evaluation is plain CE,
method modules train and checkpoint, and bad setups fail before anything is written."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.methods import DistillationMethod, FeatureRequest, MethodOptions, register_method
from hf_freqkd.methods.registry import _METHODS

INPUT_32 = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def formatted(split, rows: int, input_config=INPUT_32):
    data = split.select(range(rows))
    return with_image_transform(data, "image", "label", input_config, training=False, augmentation="none")


def tiny_model(name: str, seed: int, **kwargs) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10, **kwargs)


def config(tmp_path, **overrides) -> DistillationConfig:
    values = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        max_steps=3,
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
    )
    values.update(overrides)
    return DistillationConfig(**values)


def test_teacher_stays_frozen_and_out_of_checkpoints(tmp_path, digits):
    teacher = tiny_model("test_resnet", seed=1)
    before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    buffers_before = {name: b.detach().clone() for name, b in teacher.named_buffers()}
    args = config(tmp_path, save_strategy="steps", save_steps=3, methods={"kd": {"weight": 0.9}})
    trainer = DistillationTrainer(model=tiny_model("test_resnet", seed=2), teacher=teacher, args=args, train_dataset=formatted(digits["train"], 48))
    trainer.train()

    for name, p in teacher.named_parameters():
        assert torch.equal(p, before[name]), f"teacher parameter {name} changed"
        assert p.grad is None and not p.requires_grad
    for name, b in teacher.named_buffers():  # BatchNorm statistics: the teacher ran in eval mode
        assert torch.equal(b, buffers_before[name]), f"teacher buffer {name} changed"
    trainer.model.train()
    assert not trainer.teacher.training and not any(m.training for m in trainer.teacher.modules())

    saved = load_file(str(tmp_path / "run" / "checkpoint-3" / "model.safetensors"))
    assert saved and all(key.startswith(("student.", "methods.")) for key in saved)
    student_keys = {f"student.model.{k}" for k in trainer.student.state_dict()}
    assert set(saved) == student_keys


def test_gradient_accumulation_equals_larger_batch(tmp_path, digits):
    # LayerNorm ViTs: no batch statistics, so 2 x 8 and 1 x 16 must give the same update.
    results = []
    for batch, accumulation in ((16, 1), (8, 2)):
        args = config(
            tmp_path / f"b{batch}", per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=2,
            max_grad_norm=0.0,  # clipping would hide a wrongly scaled accumulated gradient
        )
        trainer = DistillationTrainer(
            model=tiny_model("test_vit", seed=3, img_size=32),
            teacher=tiny_model("test_vit", seed=4, img_size=32),
            args=args,
            train_dataset=formatted(digits["train"], 64),
        )
        trainer.train()
        results.append({k: v.detach().clone() for k, v in trainer.student.state_dict().items()})
    initial = tiny_model("test_vit", seed=3, img_size=32).state_dict()
    moved = max((results[0][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-4, "training did not change the student"
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-5, msg=key)


def test_evaluation_reports_plain_cross_entropy_and_topk(tmp_path, digits):
    student = tiny_model("test_resnet", seed=5)
    eval_dataset = formatted(digits["test"], 40)
    args = config(tmp_path, methods={"kd": {"weight": 5.0}})
    trainer = DistillationTrainer(model=student, teacher=tiny_model("test_resnet", seed=6), args=args, eval_dataset=eval_dataset)
    metrics = trainer.evaluate()

    student.eval()
    batch = [eval_dataset[i] for i in range(len(eval_dataset))]
    pixels = torch.stack([row["pixel_values"] for row in batch])
    labels = torch.tensor([row["labels"] for row in batch])
    with torch.no_grad():
        logits = student(pixels)
    expected_ce = F.cross_entropy(logits, labels).item()
    assert metrics["eval_loss"] == pytest.approx(expected_ce, rel=1e-4)
    assert metrics["eval_accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    assert metrics["eval_top5_accuracy"] == pytest.approx(top5)


def test_loss_terms_are_logged_separately_and_sum_to_loss(tmp_path, digits):
    args = config(tmp_path, methods={"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}})
    trainer = DistillationTrainer(
        model=tiny_model("test_resnet", seed=7), teacher=tiny_model("test_resnet", seed=8), args=args, train_dataset=formatted(digits["train"], 32)
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss_kd" in entry]
    assert len(logs) == 3
    for entry in logs:
        assert entry["loss_ce"] > 0 and entry["loss_kd"] > 0
        assert entry["loss"] == pytest.approx(entry["loss_ce"] + entry["loss_kd"], rel=1e-3)


def test_distillation_warmup_factor(tmp_path):
    args = config(tmp_path, distill_warmup_steps=4)
    trainer = DistillationTrainer(model=tiny_model("test_resnet", seed=0), teacher=tiny_model("test_resnet", seed=1), args=args)
    factors = []
    for step in range(6):
        trainer.state.global_step = step
        factors.append(trainer.distill_warmup_factor())
    assert factors == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_step_decay_of_the_learning_rate_at_epochs(tmp_path, digits):
    # 32 rows at batch 8: 4 updates per epoch, so epochs 1 and 2 are updates 4 and 8.
    args = config(tmp_path, methods={"ce": {}}, lr_decay_epochs=[1, 2], lr_decay_rate=0.1, learning_rate=1.0)
    trainer = DistillationTrainer(model=tiny_model("test_resnet", seed=0), args=args, train_dataset=formatted(digits["train"], 32))
    trainer.create_optimizer_and_scheduler(num_training_steps=12)
    rates = []
    for _ in range(10):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert rates == pytest.approx([1.0] * 4 + [0.1] * 4 + [0.01] * 2)


# ----------------------------------------------------------------------------------------------
# A method that owns a trainable module: it must be built from probed shapes, optimised,
# checkpointed, and never exported with the student.


@dataclass
class _AdapterOptions(MethodOptions):
    layer: str = field(default="layer2", metadata={"help": "feature layer"})


class _AdapterMSE(DistillationMethod):
    name = "_test_adapter_mse"
    options_class = _AdapterOptions

    def feature_request(self, student, teacher) -> FeatureRequest:
        return FeatureRequest(student=(self.options.layer,), teacher=(self.options.layer,))

    def build(self, student_shapes, teacher_shapes, num_classes):
        self.built_shapes = (student_shapes[self.options.layer], teacher_shapes[self.options.layer])
        self.adapter = nn.Conv2d(student_shapes[self.options.layer][1], teacher_shapes[self.options.layer][1], 1)

    def forward(self, student, teacher, labels):
        layer = self.options.layer
        return {"loss_adapter": F.mse_loss(self.adapter(student.features[layer]), teacher.features[layer])}


@pytest.fixture
def adapter_method():
    register_method(_AdapterMSE)
    yield _AdapterMSE
    _METHODS.pop(_AdapterMSE.name, None)


def test_method_modules_train_and_are_checkpointed(tmp_path, digits, adapter_method):
    args = config(tmp_path, save_strategy="steps", save_steps=2, max_steps=2, methods={adapter_method.name: {}})
    trainer = DistillationTrainer(
        model=tiny_model("test_resnet", seed=9), teacher=tiny_model("test_resnet", seed=10), args=args, train_dataset=formatted(digits["train"], 32)
    )
    method = trainer.model.methods[adapter_method.name]
    assert method.built_shapes[0][2:] == (4, 4)  # layer2 of test_resnet at 32 px: stride 8
    initial = method.adapter.weight.detach().clone()
    trainer.train()
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(method.adapter.weight) in optimised
    assert not torch.equal(method.adapter.weight, initial)
    saved = load_file(str(tmp_path / "run" / "checkpoint-2" / "model.safetensors"))
    assert f"methods.{adapter_method.name}.adapter.weight" in saved
    assert any("loss_adapter" in entry for entry in trainer.state.log_history)


# ----------------------------------------------------------------------------------------------
# Bad input: clear errors, raised before training, nothing written.


def test_teacher_with_other_class_count_is_rejected(tmp_path):
    import timm

    teacher = timm.create_model("test_resnet", num_classes=100)
    with pytest.raises(ValueError, match="teacher has 100 classes but the student has 10"):
        DistillationTrainer(model=tiny_model("test_resnet", seed=0), teacher=teacher, args=config(tmp_path))
    assert not (tmp_path / "run").exists()


def test_missing_teacher_is_named(tmp_path):
    with pytest.raises(ValueError, match="kd need a teacher"):
        DistillationTrainer(model=tiny_model("test_resnet", seed=0), args=config(tmp_path, methods={"kd": {}}))


def test_student_alone_needs_no_teacher(tmp_path, digits):
    trainer = DistillationTrainer(model=tiny_model("test_resnet", seed=0), args=config(tmp_path, methods={"ce": {}}), train_dataset=formatted(digits["train"], 16))
    assert trainer.teacher is None
    trainer.train()
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_image_size_the_model_cannot_take(tmp_path, digits):
    # test_vit takes any size by default; a fixed-size ViT is what users hit.
    student = tiny_model("test_vit", seed=0, img_size=32, dynamic_img_size=False)
    data = formatted(digits["train"], 8, {**INPUT_32, "input_size": (3, 16, 16)})
    with pytest.raises(ValueError, match=r"student \(VisionTransformer\) cannot take inputs of shape \(3, 16, 16\)"):
        DistillationTrainer(model=student, teacher=tiny_model("test_vit", seed=1, img_size=32), args=config(tmp_path), train_dataset=data)
    assert not (tmp_path / "run").exists()


def test_bf16_mixed_precision_runs_teacher_and_student_under_autocast(tmp_path, digits):
    args = config(tmp_path, bf16=True, max_steps=2)
    trainer = DistillationTrainer(
        model=tiny_model("test_resnet", seed=11), teacher=tiny_model("test_resnet", seed=12), args=args, train_dataset=formatted(digits["train"], 16)
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with trainer.compute_loss_context_manager():
        teacher_logits = trainer.teacher(batch["pixel_values"]).logits
    assert teacher_logits.dtype == torch.bfloat16  # mixed precision applies to the teacher
    trainer.train()
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)
    assert all(p.dtype == torch.float32 for p in trainer.student.parameters())  # master weights stay fp32


@pytest.mark.parametrize("method", ["figkd", "dkd", "fam", "fam_l2l"])
def test_bf16_training_step_for_every_teacher_method(tmp_path, digits, method):
    # Wavelet and FFT steps run in float32 inside bf16 autocast (tested per layer); here the whole
    # step: every logged term finite, master weights fp32.
    args = config(tmp_path, bf16=True, max_steps=2, methods={"ce": {}, method: {}})
    trainer = DistillationTrainer(
        model=tiny_model("resnet8", seed=13), teacher=tiny_model("resnet14", seed=14), args=args, train_dataset=formatted(digits["train"], 16)
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(math.isfinite(value) for entry in logged for key, value in entry.items() if key.startswith("loss"))
    assert any(key.startswith("loss_") and key != "loss_ce" for key in logged[0])
    assert all(p.dtype == torch.float32 for p in trainer.accelerator.unwrap_model(trainer.model).parameters())

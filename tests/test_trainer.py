"""DistillationTrainer: the teacher stays frozen, accumulation is exact, evaluation is plain CE,
method modules train and checkpoint, and bad setups fail before anything is written."""

from __future__ import annotations

import copy
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

from .helpers import AlternatingBranches

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


def test_weighted_terms_reach_the_loss_and_only_distillation_warms_up(tmp_path, digits):
    # Learning rate 0 and one batch of all 16 rows: every step computes the same raw terms, which the
    # test computes itself from copies of the two networks. What changes from step to step is the
    # warm-up factor, min(step / 4, 1), on kd alone: the ground-truth CE is never warmed up.
    student, teacher = tiny_model("test_resnet", seed=7), tiny_model("test_resnet", seed=8)
    reference_student, reference_teacher = copy.deepcopy(student).train(), copy.deepcopy(teacher).eval()
    data = formatted(digits["train"], 16)
    args = config(
        tmp_path, per_device_train_batch_size=16, learning_rate=0.0, max_steps=6, distill_warmup_steps=4,
        methods={"ce": {"weight": 0.3}, "kd": {"weight": 2.0, "temperature": 4.0}},
    )
    trainer = DistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=data)
    trainer.train()

    pixels = torch.stack([row["pixel_values"] for row in data])
    labels = torch.tensor([row["labels"] for row in data])
    with torch.no_grad():
        student_logits, teacher_logits = reference_student(pixels), reference_teacher(pixels)
    raw_ce = F.cross_entropy(student_logits, labels).item()
    # Hinton's KD written out: T^2 * KL(p_teacher || p_student) at T = 4, mean over the batch.
    p_teacher = F.softmax(teacher_logits / 4, dim=1)
    raw_kd = 16 * (p_teacher * (p_teacher.log() - F.log_softmax(student_logits / 4, dim=1))).sum(1).mean().item()

    logs = [entry for entry in trainer.state.log_history if "loss_kd" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4, 5, 6]
    for entry, warmup in zip(logs, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]):
        assert entry["loss_ce"] == pytest.approx(0.3 * raw_ce, rel=1e-4, abs=2e-6), entry
        assert entry["loss_kd"] == pytest.approx(2.0 * warmup * raw_kd, rel=1e-4, abs=2e-6), entry
        assert entry["loss"] == pytest.approx(entry["loss_ce"] + entry["loss_kd"], rel=1e-4, abs=2e-6), entry


@dataclass
class _ConstantOptions(MethodOptions):
    pass


class _ConstantTerm(DistillationMethod):
    """A distillation term that is always 1 before weighting: what is logged is weight x warm-up factor."""

    name = "_test_constant_term"
    options_class = _ConstantOptions
    uses_teacher = False

    def forward(self, student, teacher, labels):
        return {"loss_constant": student.logits.float().sum() * 0 + 1.0}


@pytest.fixture
def constant_term():
    register_method(_ConstantTerm)
    yield _ConstantTerm
    _METHODS.pop(_ConstantTerm.name, None)


@pytest.mark.parametrize("warmup", [{"distill_warmup_steps": 4}, {"distill_warmup_epochs": 2.0}], ids=["steps", "epochs"])
def test_warmup_factor_scales_the_distillation_term_at_each_step(tmp_path, digits, constant_term, warmup):
    # 32 rows in batches of 8, two batches per update: 2 updates per epoch, so 2 epochs of warm-up
    # are 4 updates, like distill_warmup_steps=4. The factor of update s is min(s / 4, 1).
    args = config(
        tmp_path, max_steps=6, gradient_accumulation_steps=2,
        methods={"ce": {}, constant_term.name: {"weight": 0.5}}, **warmup,
    )
    trainer = DistillationTrainer(model=tiny_model("test_resnet", seed=0), args=args, train_dataset=formatted(digits["train"], 32))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss_constant" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4, 5, 6]
    assert [entry["loss_constant"] for entry in logs] == pytest.approx([0.5 * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)])


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
# Data-parallel training: DDP searches each step for unused parameters only when a method leaves
# some (tests/test_multiprocess.py shows the effect on two processes).


@pytest.fixture
def alternating_branches():
    register_method(AlternatingBranches)
    yield AlternatingBranches
    _METHODS.pop(AlternatingBranches.name, None)


@pytest.mark.parametrize(
    "leaves_some_unused, set_by_user, searched",
    [(False, None, False), (True, None, True), (False, True, True), (True, False, False)],
    ids=["all-used", "method-leaves-some-unused", "user-says-search", "user-says-do-not-search"],
)
def test_ddp_searches_for_unused_parameters_only_when_a_method_leaves_some(
    tmp_path, alternating_branches, leaves_some_unused, set_by_user, searched
):
    methods = {"ce": {}, alternating_branches.name: {}} if leaves_some_unused else {"ce": {}, "kd": {}}
    args = config(tmp_path, methods=methods, ddp_find_unused_parameters=set_by_user)
    trainer = DistillationTrainer(model=tiny_model("test_resnet", seed=0), teacher=tiny_model("test_resnet", seed=1), args=args)
    assert trainer.args.ddp_find_unused_parameters is searched
    assert args.ddp_find_unused_parameters is set_by_user  # the caller's args may serve a run of other methods


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


def test_a_failed_build_leaves_the_callers_args_untouched(tmp_path, monkeypatch):
    # The Hub is reachable in principle (no offline switch) and a token is given: push_to_hub is valid.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    args = config(tmp_path, push_to_hub=True, hub_model_id="user/student", hub_token="hf_not_a_real_token")
    import timm

    with pytest.raises(ValueError, match="teacher has 100 classes"):
        DistillationTrainer(model=tiny_model("test_resnet", seed=0), teacher=timm.create_model("test_resnet", num_classes=100), args=args)
    assert (args.push_to_hub, args.hub_token) == (True, "hf_not_a_real_token")
    # The user fixes the teacher and builds again with the same args: the push is still on.
    trainer = DistillationTrainer(model=tiny_model("test_resnet", seed=0), teacher=tiny_model("test_resnet", seed=1), args=args)
    assert trainer.hub_settings.push_to_hub and trainer.hub_settings.repo_id == "user/student"
    assert trainer.hub_settings.token == "hf_not_a_real_token"
    assert (args.push_to_hub, args.hub_token) == (False, None)  # out of the Trainer's hands once valid

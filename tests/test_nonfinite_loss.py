"""The numerical guard (``nonfinite_loss``): a NaN / inf loss term is caught at the step it appears,
named, and either stops the run before that step is applied or skips the update entirely."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pytest
import timm
import torch
from torch import nn
from transformers import TrainerCallback

import hf_freqkd  # noqa: F401  registers the CIFAR zoo
from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.methods import DistillationMethod, MethodOptions, register_method
from hf_freqkd.methods.registry import _METHODS
from hf_freqkd.training import NonFiniteLossError

INPUT_8 = {"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


class TeacherGoingBad(nn.Module):
    """A resnet8 teacher whose logits are NaN (or inf) on the listed training batches (1-based)."""

    def __init__(self, bad_batches, value=float("nan")):
        super().__init__()
        self.model = timm.create_model("resnet8", num_classes=10)
        self.num_classes = 10
        self.bad_batches, self.value, self.batches = set(bad_batches), value, 0

    def forward(self, x):
        logits = self.model(x)
        if x.shape[0] > 1:  # the trainer's shape probe is a single image
            self.batches += 1
            if self.batches in self.bad_batches:
                logits = torch.full_like(logits, self.value)
        return logits


class Snapshots(TrainerCallback):
    """Student weights and optimizer state after every optimizer update (index 0: before training)."""

    def __init__(self):
        self.trainer = None
        self.weights, self.optimizer_states = [], []

    def take(self):
        self.weights.append({k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()})
        self.optimizer_states.append(copy.deepcopy(self.trainer.optimizer.state_dict()["state"]))

    def on_train_begin(self, args, state, control, **kwargs):
        self.weights.append({k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()})
        self.optimizer_states.append({})

    def on_step_end(self, args, state, control, **kwargs):
        self.take()


@pytest.fixture(scope="module")
def train_data():
    data = load_digits_dataset()["train"].select(range(64))
    return with_image_transform(data, "image", "label", INPUT_8, training=False, augmentation="none")


def make_trainer(tmp_path, train_data, teacher, **overrides):
    values = {
        "output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 8, "max_steps": 3, "learning_rate": 0.1,
        "optim": "sgd", "optim_args": "momentum=0.9", "weight_decay": 0.01, "lr_scheduler_type": "constant",
        "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "use_cpu": True,
        "seed": 0, "disable_tqdm": True, "methods": {"ce": {"weight": 0.5}, "kd": {}},
    }
    values.update(overrides)
    torch.manual_seed(0)
    student = timm.create_model("resnet8", num_classes=10)
    snapshots = Snapshots()
    trainer = DistillationTrainer(model=student, teacher=teacher, args=DistillationConfig(**values), train_dataset=train_data, callbacks=[snapshots])
    snapshots.trainer = trainer
    return trainer, snapshots


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_parameters(a: dict, b: dict) -> bool:
    """Parameters only: the forward of the batch that went bad (or of an earlier micro-batch of the same
    update) may have moved BatchNorm running statistics."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return same({k: v for k, v in a.items() if not k.endswith(buffers)}, {k: v for k, v in b.items() if not k.endswith(buffers)})


def same_optimizer_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


def test_stop_is_the_default_and_names_term_and_step(tmp_path, train_data):
    trainer, snapshots = make_trainer(tmp_path, train_data, TeacherGoingBad({2}))
    assert trainer.args.nonfinite_loss == "stop"
    with pytest.raises(NonFiniteLossError, match=r"loss term 'loss_kd' is nan at step 2; the run stopped before applying that step.*nonfinite_loss=skip"):
        trainer.train()
    assert len(snapshots.weights) == 2  # before training, after step 1: step 2 was never applied
    assert same_parameters(dict(trainer.model.state_dict()), snapshots.weights[1])


@dataclass
class _InfiniteOptions(MethodOptions):
    at_step: int = field(default=1, metadata={"help": "training forward at which the term is +inf (1-based)"})


class _InfiniteAtStep(DistillationMethod):
    """A term that overflows to +inf at one training forward, as a loss can in float32 or bf16."""

    name = "_test_inf_at_step"
    options_class = _InfiniteOptions
    uses_teacher = False

    def __init__(self, options=None):
        super().__init__(options)
        self.calls = 0

    def forward(self, student, teacher, labels):
        self.calls += 1
        value = student.logits.float().mean() * 0
        return {"loss_test_inf": value + float("inf") if self.calls == self.options.at_step else value}


@pytest.fixture
def infinite_term():
    register_method(_InfiniteAtStep)
    yield _InfiniteAtStep
    _METHODS.pop(_InfiniteAtStep.name, None)


def test_inf_is_named_as_inf_next_to_nan(tmp_path, train_data, infinite_term):
    # At step 1 the teacher's logits are NaN (so kd is NaN) and the test term is +inf: each is named with its kind.
    trainer, snapshots = make_trainer(
        tmp_path, train_data, TeacherGoingBad({1}), methods={"ce": {}, "kd": {}, infinite_term.name: {"at_step": 1}}
    )
    with pytest.raises(NonFiniteLossError, match=r"loss terms 'loss_kd' is nan, 'loss_test_inf' is inf at step 1; the run stopped"):
        trainer.train()
    assert len(snapshots.weights) == 1  # stopped before the first update


def test_inf_alone_is_named_inf(tmp_path, train_data, infinite_term):
    trainer, _ = make_trainer(tmp_path, train_data, TeacherGoingBad(set()), methods={"ce": {}, infinite_term.name: {"at_step": 2}})
    with pytest.raises(NonFiniteLossError, match=r"loss term 'loss_test_inf' is inf at step 2; the run stopped"):
        trainer.train()


def test_skip_leaves_weights_and_optimizer_state_untouched_and_counts_the_step(tmp_path, train_data):
    trainer, snapshots = make_trainer(tmp_path, train_data, TeacherGoingBad({2}), nonfinite_loss="skip")
    trainer.train()
    assert len(snapshots.weights) == 4
    # Step 2 changed nothing - weights, BatchNorm statistics, momentum buffers - though momentum and
    # weight decay would have moved the weights even with zero gradients.
    assert same(snapshots.weights[2], snapshots.weights[1])
    assert same_optimizer_state(snapshots.optimizer_states[2], snapshots.optimizer_states[1])
    # Steps 1 and 3 trained.
    assert not same(snapshots.weights[1], snapshots.weights[0])
    assert not same(snapshots.weights[3], snapshots.weights[2])
    assert all(torch.isfinite(v).all() for v in snapshots.weights[3].values() if v.is_floating_point())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry.get("skipped_steps", 0) for entry in logs] == [0, 1, 1]
    # The window of step 2 trained nothing: its loss is NaN (not the Trainer's 0.0), the others are finite.
    assert math.isnan(logs[1]["loss"])
    for entry in (logs[0], logs[2]):
        assert all(math.isfinite(value) for value in entry.values() if isinstance(value, float))
        assert entry["grad_norm"] >= 0


def test_skip_with_gradient_accumulation_drops_the_whole_update(tmp_path, train_data):
    # Two micro-batches per update; the second of update 1 goes bad: update 1 is skipped, update 2 trains.
    trainer, snapshots = make_trainer(
        tmp_path, train_data, TeacherGoingBad({2}), nonfinite_loss="skip", gradient_accumulation_steps=2, max_steps=2,
        per_device_train_batch_size=4,
    )
    trainer.train()
    assert same_parameters(snapshots.weights[1], snapshots.weights[0])
    assert same_optimizer_state(snapshots.optimizer_states[1], {})  # SGD never stepped: no momentum yet
    assert not same_parameters(snapshots.weights[2], snapshots.weights[1])
    assert trainer.skipped_steps == 1
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(entry["grad_norm"]) for entry in logs)
    assert math.isnan(logs[0]["loss"]) and math.isfinite(logs[1]["loss"])  # update 1 trained nothing


def test_the_decision_follows_every_process(tmp_path, train_data, monkeypatch):
    """Another process saw a NaN: this one skips the same update although its own terms are finite."""
    trainer, _ = make_trainer(tmp_path, train_data, TeacherGoingBad(set()), nonfinite_loss="skip", max_steps=1)
    accelerator = trainer.accelerator
    monkeypatch.setattr(type(accelerator), "num_processes", property(lambda self: 2))
    reduced = []

    def reduce(tensor, reduction="mean"):
        reduced.append(reduction)
        return tensor + torch.tensor([0.0, 1.0])  # [ce, kd]: the other process flags kd

    monkeypatch.setattr(accelerator, "reduce", reduce)
    terms = {"loss_ce": torch.tensor(1.0), "loss_kd": torch.tensor(2.0)}
    assert trainer._nonfinite_terms(terms) == ["loss_kd"]
    assert reduced == ["sum"] and trainer._skip_update
    trainer.args.nonfinite_loss = "stop"
    with pytest.raises(NonFiniteLossError, match="'loss_kd' is non-finite on another process at step 1"):
        trainer._nonfinite_terms(terms)


def test_policy_is_validated():
    with pytest.raises(ValueError, match="nonfinite_loss = 'ignore' is invalid: expected 'stop' or 'skip'"):
        DistillationConfig(output_dir="x", nonfinite_loss="ignore")

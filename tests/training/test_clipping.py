"""Gradient clipping is visible (record, log, card) and off by default; weight decay reaches the
parameters the research code decays."""

from __future__ import annotations

import json
import logging

import pytest
import timm

import hf_freqkd  # noqa: F401  registers the CIFAR zoo in timm
from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.errors import ConfigError
from hf_freqkd.output_dir import RUN_RECORD

INPUT_8 = {"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def train_rows():
    rows = load_digits_dataset()["train"].select(range(32))
    return with_image_transform(rows, "image", "label", INPUT_8, training=False, augmentation="none")


def trainer_for(tmp_path, train_rows, name="run", **overrides) -> DistillationTrainer:
    values = dict(output_dir=str(tmp_path / name), methods={"ce": {}}, max_steps=4, per_device_train_batch_size=8,
                  learning_rate=0.1, optim="sgd", report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no")
    args = DistillationConfig(**{**values, **overrides})
    return DistillationTrainer(model=timm.create_model("resnet8", num_classes=10), args=args, train_dataset=train_rows)


def test_clipping_is_off_unless_asked_for(tmp_path, train_rows):
    assert DistillationConfig(output_dir=str(tmp_path)).max_grad_norm == 0.0  # not TrainingArguments' 1.0
    trainer = trainer_for(tmp_path, train_rows)
    trainer.train()
    record = json.loads((tmp_path / "run" / RUN_RECORD).read_text())
    assert record["gradient_clipping"] == {"max_grad_norm": 0.0, "steps": 4, "clipped_steps": 0, "fraction": 0.0}
    assert "| max_grad_norm | 0 (no clipping) |" in (tmp_path / "run" / "student" / "README.md").read_text()


def test_a_mostly_clipped_run_says_so_in_record_log_and_card(tmp_path, train_rows, caplog):
    trainer = trainer_for(tmp_path, train_rows, max_grad_norm=1e-6)  # every step's norm is above it
    with caplog.at_level(logging.INFO, logger="hf_freqkd"):
        trainer.train()
    record = json.loads((tmp_path / "run" / RUN_RECORD).read_text())
    assert record["gradient_clipping"] == {"max_grad_norm": 1e-6, "steps": 4, "clipped_steps": 4, "fraction": 1.0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "mostly clipped" in r.getMessage()]
    assert warnings == ["the run was mostly clipped: gradient clipping at max_grad_norm 1e-06 acted on 4 of 4 optimizer steps "
                        "(100 %); set max_grad_norm: 0 to train without clipping, as the research code of the classification "
                        "recipes does (docs/recipes.md)"]
    assert "Gradient clipping at a norm of 1e-06 acted on 4 of 4 optimizer steps (100 %)." in (tmp_path / "run" / "student" / "README.md").read_text()


def test_a_loose_norm_clips_nothing_and_does_not_warn(tmp_path, train_rows, caplog):
    trainer = trainer_for(tmp_path, train_rows, max_grad_norm=1e6)
    with caplog.at_level(logging.INFO, logger="hf_freqkd"):
        trainer.train()
    assert trainer.run_record["gradient_clipping"]["clipped_steps"] == 0
    assert not [r for r in caplog.records if "mostly clipped" in r.getMessage()]


def test_a_resumed_run_counts_the_steps_before_the_resume(tmp_path, train_rows):
    first = trainer_for(tmp_path, train_rows, max_grad_norm=1e-6, save_strategy="steps", save_steps=2)
    first.train()
    resumed = trainer_for(tmp_path, train_rows, name="run", max_grad_norm=1e-6, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.run_record["gradient_clipping"]["steps"] == 4 and resumed.run_record["resumed_from"] == "checkpoint-2"


@pytest.mark.parametrize("scope", ["all", "trainer"])
def test_weight_decay_reaches_the_parameters_of_its_scope(tmp_path, train_rows, scope):
    trainer = trainer_for(tmp_path, train_rows, weight_decay=5e-4, weight_decay_on=scope)
    optimizer = trainer.create_optimizer()
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    named = dict(trainer.model.named_parameters())
    bias, batchnorm = named["student.model.fc.bias"], named["student.model.bn1.weight"]
    if scope == "all":  # SGD(model.parameters(), weight_decay=...) as mdistiller
        assert decayed == {id(p) for p in trainer.model.parameters()} and id(bias) in decayed and id(batchnorm) in decayed
    else:  # transformers' split: no biases
        assert id(bias) not in decayed and id(named["student.model.fc.weight"]) in decayed


@pytest.mark.parametrize("field, value, message", [("weight_decay_on", "some", "expected one of all, trainer"),
                                                   ("max_grad_norm", -1.0, "expected a number >= 0")])
def test_bad_optimiser_settings_are_refused(tmp_path, field, value, message):
    with pytest.raises(ConfigError, match=message):
        DistillationConfig(output_dir=str(tmp_path), **{field: value})

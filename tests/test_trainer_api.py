"""A run through the Trainer API ends like a command-line run: output_dir/student and the run
record, so export and push work on it; nothing non-finite is ever exported."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

import hf_freqkd  # noqa: F401  registers the CIFAR zoo in timm
from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.errors import ConfigError, TrainingError
from hf_freqkd.export import export_run
from hf_freqkd.output_dir import RUN_RECORD

INPUT_16 = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def data():
    digits = load_digits_dataset()
    train = with_image_transform(digits["train"].select(range(32)), "image", "label", INPUT_16, training=False, augmentation="none")
    test = with_image_transform(digits["test"].select(range(32)), "image", "label", INPUT_16, training=False, augmentation="none")
    return train, test


def tiny(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10)


def args_for(tmp_path, **overrides) -> DistillationConfig:
    values = dict(
        output_dir=str(tmp_path / "run"), methods={"ce": {}, "kd": {}}, per_device_train_batch_size=16,
        per_device_eval_batch_size=32, num_train_epochs=2, learning_rate=0.05, optim="sgd", eval_strategy="epoch",
        save_strategy="epoch", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )
    values.update(overrides)
    return DistillationConfig(**values)


def test_a_trainer_api_run_exports_the_student_and_records_the_run(tmp_path, data):
    train, test = data
    trainer = DistillationTrainer(model=tiny("resnet8", 0), teacher=tiny("resnet14", 1), args=args_for(tmp_path), train_dataset=train, eval_dataset=test)
    trainer.train()
    run_dir = tmp_path / "run"
    record = json.loads((run_dir / RUN_RECORD).read_text())
    assert record["status"] == "finished" and record["mode"] == "distill"
    assert record["config"]["student_model"] == "resnet8" and record["config"]["teacher_model"] == "resnet14"
    assert math.isfinite(record["metrics"]["eval_accuracy"])  # the last evaluation is on the card
    # The exported student is the trained one and loads with timm alone.
    images = torch.stack([test[i]["pixel_values"] for i in range(4)])
    loaded = timm.create_model(f"local-dir:{run_dir / 'student'}", pretrained=True).eval()
    trainer.student.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(images), trainer.student(images), atol=1e-5)
    # hf-freqkd export works on it: from the final student and from a Trainer checkpoint.
    assert (export_run(run_dir, to=tmp_path / "again") / "model.safetensors").is_file()
    from_checkpoint = export_run(run_dir, checkpoint="checkpoint-4")
    assert set(load_file(from_checkpoint / "model.safetensors")) == set(load_file(run_dir / "student" / "model.safetensors"))


def test_save_model_writes_the_student_timm_loads_not_the_distiller(tmp_path, data):
    train, _ = data
    trainer = DistillationTrainer(
        model=tiny("resnet8", 0), teacher=tiny("resnet8", 1), args=args_for(tmp_path, eval_strategy="no", save_strategy="no", max_steps=1),
        train_dataset=train,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    keys = set(load_file(tmp_path / "saved" / "model.safetensors"))
    assert not any(key.startswith(("student.", "methods.")) for key in keys)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'saved'}", pretrained=True)
    assert set(loaded.state_dict()) >= keys


def test_non_finite_final_weights_fail_and_export_nothing(tmp_path, data):
    train, test = data
    trainer = DistillationTrainer(
        model=tiny("resnet8", 0), teacher=tiny("resnet8", 1), args=args_for(tmp_path, save_strategy="no", eval_strategy="no", max_steps=1),
        train_dataset=train, eval_dataset=test,
    )
    trainer.train()  # finite: exported
    with torch.no_grad():
        next(trainer.student.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match="final weights hold NaN or inf; no student was exported"):
        trainer.save_student({"eval_accuracy": 1.0})
    record = json.loads((tmp_path / "run" / RUN_RECORD).read_text())
    assert record["status"] == "failed" and record["metrics"] == {}


def test_a_non_finite_evaluation_is_never_put_on_a_card(tmp_path, data):
    train, _ = data
    trainer = DistillationTrainer(
        model=tiny("resnet8", 0), teacher=tiny("resnet8", 1), args=args_for(tmp_path, save_strategy="no", eval_strategy="no", max_steps=1),
        train_dataset=train,
    )
    trainer.train()
    card_before = (tmp_path / "run" / "student" / "README.md").read_text()
    with pytest.raises(TrainingError, match="evaluation loss is nan"):
        trainer.save_student({"eval_loss": float("nan"), "eval_top5_accuracy": 1.0})
    assert (tmp_path / "run" / "student" / "README.md").read_text() == card_before


def test_a_run_whose_every_update_was_skipped_fails(tmp_path, data):
    train, _ = data
    trainer = DistillationTrainer(
        model=tiny("resnet8", 0), teacher=tiny("resnet8", 1),
        args=args_for(tmp_path, save_strategy="no", eval_strategy="no", max_steps=2, nonfinite_loss="skip", logging_steps=1),
        train_dataset=train,
    )
    with torch.no_grad():  # a teacher whose logits are NaN: every distillation loss is NaN
        trainer.teacher.model.get_classifier().bias.fill_(float("nan"))
    with pytest.raises(TrainingError, match="every one of the 2 updates was skipped"):
        trainer.train()
    assert not (tmp_path / "run" / "student").exists()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all(math.isnan(entry["loss"]) for entry in logs)  # not the Trainer's 0.0


def test_a_folder_holding_a_finished_run_is_refused_before_training(tmp_path, data):
    train, _ = data
    arguments = args_for(tmp_path, save_strategy="no", eval_strategy="no", max_steps=1)
    DistillationTrainer(model=tiny("resnet8", 0), teacher=tiny("resnet8", 1), args=arguments, train_dataset=train).train()
    weights = (tmp_path / "run" / "student" / "model.safetensors").read_bytes()
    again = DistillationTrainer(model=tiny("resnet8", 2), teacher=tiny("resnet8", 1), args=args_for(tmp_path, save_strategy="no", eval_strategy="no", max_steps=1), train_dataset=train)
    with pytest.raises(ConfigError, match="already holds a run"):
        again.train()
    assert again.state.global_step == 0
    assert (tmp_path / "run" / "student" / "model.safetensors").read_bytes() == weights

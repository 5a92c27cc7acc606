"""End to end through ``hf_freqkd.run``: train a teacher, distil a student, export, reload."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from safetensors.torch import load_file

import hf_freqkd  # noqa: F401  registers the CIFAR zoo
from hf_freqkd.demo import COMMON, run_demo
from hf_freqkd.run import RUN_RECORD, run

FAST = {**COMMON, "weight_decay": 0.0}  # the demo's recipe, shorter runs below


def test_tiny_distillation_on_digits_beats_chance_widely(tmp_path):
    teacher = run("teacher", defaults={**FAST, "student_model": "resnet8", "num_train_epochs": 3, "output_dir": str(tmp_path / "t")})
    assert teacher.metrics["eval_accuracy"] > 0.6
    student = run(
        "distill",
        defaults={
            **FAST,
            "student_model": "resnet8",
            "teacher_model": teacher.export_dir,
            "methods": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9}},
            "num_train_epochs": 3,
            "output_dir": str(tmp_path / "s"),
        },
    )
    # Chance is 10 %; three short epochs already get far above it.
    assert student.metrics["eval_accuracy"] > 0.5
    assert set(student.metrics) >= {"eval_loss", "eval_accuracy", "eval_top5_accuracy"}
    assert student.metrics["eval_top5_accuracy"] >= student.metrics["eval_accuracy"]
    record = json.loads((tmp_path / "s" / RUN_RECORD).read_text())
    assert record["teacher_parameters"] == teacher.student_parameters

    # The export is the student alone, in timm's format, and reloads to identical logits.
    exported = timm.create_model(f"local-dir:{student.export_dir}", pretrained=True).eval()
    probe = torch.randn(2, 3, 16, 16)
    state = load_file(f"{student.export_dir}/model.safetensors")
    assert not any(key.startswith(("methods.", "teacher")) for key in state)
    fresh = timm.create_model("resnet8", num_classes=10).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(exported(probe), fresh(probe))


def test_demo_prints_the_three_rows(tmp_path, capsys):
    rows = run_demo(tmp_path / "demo", overrides={"num_train_epochs": 1, "max_train_samples": 64, "max_eval_samples": 64})
    assert [row["model"] for row in rows] == ["teacher resnet20", "student resnet8 + KD", "student resnet8 alone"]
    assert rows[0]["parameters"] > rows[1]["parameters"] == rows[2]["parameters"]
    out = capsys.readouterr().out
    assert "| student resnet8 + KD |" in out and "first 64 training images" in out
    with pytest.raises(ValueError, match="already exists"):
        run_demo(tmp_path / "demo")


def test_validation_fraction_holds_out_a_stratified_eval_split(tmp_path):
    from hf_freqkd.data import load_digits_dataset
    from hf_freqkd.run import prepare_run

    parquet = tmp_path / "train_only.parquet"
    load_digits_dataset()["train"].select(range(200)).to_parquet(str(parquet))
    common = {**FAST, "student_model": "resnet8", "max_steps": 1, "output_dir": str(tmp_path / "v"), "dataset": str(parquet)}
    trainer, *_ = prepare_run("teacher", defaults={**common, "validation_fraction": 0.25})
    assert (len(trainer.train_dataset), len(trainer.eval_dataset)) == (150, 50)
    eval_labels = [trainer.eval_dataset[i]["labels"] for i in range(50)]
    assert all(eval_labels.count(digit) in (4, 5, 6) for digit in range(10))  # stratified: about 5 per class

    # A dataset with its own test split: validation comes from train and the test split is left alone.
    digits = {**common, "dataset": "digits", "validation_fraction": 0.2, "output_dir": str(tmp_path / "d")}
    trainer, *_ = prepare_run("teacher", defaults=digits)
    train_rows = len(load_digits_dataset()["train"])
    assert len(trainer.eval_dataset) == math.ceil(0.2 * train_rows) and len(trainer.train_dataset) == train_rows - len(trainer.eval_dataset)

    with pytest.raises(ValueError, match="validation_fraction = 0.2 holds out part of the train split 'train' .* eval_split = 'test'"):
        prepare_run("teacher", defaults={**digits, "eval_split": "test", "output_dir": str(tmp_path / "e")})
    assert not (tmp_path / "e").exists()


def test_run_data_comes_from_the_config_task(tmp_path):
    """A task registered by a user's code is accepted in the config and formats the run's data."""
    from hf_freqkd.config import parse_config
    from hf_freqkd.run import load_run_data
    from hf_freqkd.tasks import base, register_task
    from hf_freqkd.tasks.classification import ClassificationTask

    calls = []

    @register_task
    class CountingTask(ClassificationTask):
        name = "counting_test_task"

        def matches(self, model):
            return False

        def data_functions(self, train_data, data_args, num_classes=None):
            calls.append((len(train_data), num_classes))
            return super().data_functions(train_data, data_args, num_classes)

    try:
        args, model_args, data_args = parse_config(
            None,
            defaults={**FAST, "task": "counting_test_task", "num_classes": 10, "output_dir": str(tmp_path / "r")},
        )
        data = load_run_data(args, model_args, data_args)
    finally:
        base._TASKS.pop("counting_test_task", None)
    assert calls == [(1347, 10)]  # the digits train split, before max_train_samples caps it
    assert (data.image_column, data.label_column, data.num_classes) == ("image", "label", 10)

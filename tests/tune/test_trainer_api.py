"""``DistillationTrainer.hyperparameter_search`` from the Trainer API, as transformers.Trainer's:
model_init gives each trial's student, the distillation is rebuilt around it for the trial's methods."""

from __future__ import annotations

import json

import optuna
import pytest
import timm
import torch

import hf_freqkd  # noqa: F401  registers the CIFAR zoo in timm
from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.errors import ConfigError
from hf_freqkd.output_dir import RUN_RECORD

INPUT_8 = {"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def data():
    digits = load_digits_dataset()["train"]
    train = with_image_transform(digits.select(range(32)), "image", "label", INPUT_8, training=True, augmentation="crop")
    validation = with_image_transform(digits.select(range(32, 64)), "image", "label", INPUT_8, training=False, augmentation="none")
    return train, validation


def trainer_for(tmp_path, data, **args) -> DistillationTrainer:
    train, validation = data
    torch.manual_seed(1)
    teacher = timm.create_model("resnet14", num_classes=10)
    values = dict(
        output_dir=str(tmp_path / "search"), methods={"ce": {}, "kd": {}}, per_device_train_batch_size=16, per_device_eval_batch_size=32,
        num_train_epochs=2, learning_rate=0.05, optim="sgd", eval_strategy="epoch", save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, seed=0,
    )
    return DistillationTrainer(
        model_init=lambda: timm.create_model("resnet8", num_classes=10), teacher=teacher, args=DistillationConfig(**{**values, **args}),
        train_dataset=train, eval_dataset=validation,
    )


def record(tmp_path, run: str) -> dict:
    return json.loads((tmp_path / "search" / run / RUN_RECORD).read_text())


def test_hyperparameter_search_rebuilds_the_distillation_for_each_trials_methods(tmp_path, data):
    trainer = trainer_for(tmp_path, data)
    best = trainer.hyperparameter_search(hp_space={"methods": ["kd", "fam_l2l"]}, n_trials=3, backend="optuna")
    assert best.objective == max(record(tmp_path, f"run-{i}")["metrics"]["eval_accuracy"] for i in range(3))  # the headline metric, maximised
    methods = [record(tmp_path, f"run-{i}")["config"]["methods"] for i in range(3)]
    assert all(record(tmp_path, f"run-{i}")["status"] == "finished" for i in range(3))
    assert {name for m in methods for name in m} == {"kd", "fam_l2l"}  # both candidates drawn (seeded TPE)
    # Each trial's student carries its own method's modules and nothing of the previous trial's.
    assert best.hyperparameters["method"] in ("kd", "fam_l2l")
    fam = next(i for i, m in enumerate(methods) if "fam_l2l" in m)
    assert record(tmp_path, f"run-{fam}")["config"]["methods"]["fam_l2l"]["weight"] == methods[fam]["fam_l2l"]["weight"]


def test_a_trial_function_may_vary_methods_and_training_arguments(tmp_path, data):
    drawn = {}

    def hp_space(trial: optuna.Trial) -> dict:
        drawn[trial.number] = (trial.suggest_float("temperature", 1.0, 8.0), trial.suggest_float("lr", 0.01, 0.1))
        return {"methods": {"ce": {"weight": 0.5}, "kd": {"temperature": drawn[trial.number][0]}}, "learning_rate": drawn[trial.number][1]}

    trainer = trainer_for(tmp_path, data)
    best = trainer.hyperparameter_search(hp_space=hp_space, n_trials=2, compute_objective=lambda metrics: metrics["eval_loss"], direction="minimize")
    assert set(best.hyperparameters) == {"temperature", "lr"}
    for number, (temperature, learning_rate) in drawn.items():
        config = record(tmp_path, f"run-{number}")["config"]
        assert config["methods"] == {"ce": {"weight": 0.5}, "kd": {"temperature": temperature}}
        assert record(tmp_path, f"run-{number}")["settings"]["learning_rate"] == learning_rate


def test_a_search_needs_model_init(tmp_path, data):
    train, validation = data
    trainer = DistillationTrainer(
        model=timm.create_model("resnet8", num_classes=10), args=DistillationConfig(output_dir=str(tmp_path), methods={"ce": {}}, use_cpu=True),
        train_dataset=train, eval_dataset=validation,
    )
    with pytest.raises(ConfigError, match="pass model_init="):
        trainer.hyperparameter_search(n_trials=1)

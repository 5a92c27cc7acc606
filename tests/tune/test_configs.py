"""The shipped tune configs load and check (space, split, search settings) without training."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_freqkd.tune.config import load_tune_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "tune").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_a_shipped_tune_config_checks_and_evaluates_on_a_validation_split(path):
    config = load_tune_config(path)
    assert config.data_args.validation_fraction and config.data_args.eval_split is None
    assert not config.space.is_empty() and config.search.pruner != "none"


def test_the_cifar10_search_is_the_benchmarks_setting_with_at_most_40_trials():
    config = load_tune_config(CONFIGS[0].parent / "cifar10.yaml")
    assert config.search.n_trials <= 40 and config.data_args.validation_fraction == 0.1
    assert config.model_args.student_model == "resnet8" and config.args.teacher_model.startswith("runs/bench/cifar10/teacher")

"""Logging through ``report_to``: TensorBoard gets every loss term as its own scalar."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hf_freqkd.run import run

from .helpers import tiny_run_config


def scalar_tags(output_dir: Path) -> dict[str, list[float]]:
    event_files = sorted(output_dir.rglob("events.out.tfevents.*"))
    assert event_files, f"no TensorBoard event file under {output_dir}"
    values: dict[str, list[float]] = {}
    for event_file in event_files:
        accumulator = EventAccumulator(str(event_file)).Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, []).extend(event.value for event in accumulator.Scalars(tag))
    return values


def tensorboard_run(output_dir: Path, methods: dict, **overrides) -> dict[str, list[float]]:
    # Learning rate 0: the student never changes, so two runs with the same seed compute the same raw
    # terms on the same batches, whatever their weights; only weight and warm-up tell them apart.
    run(
        "distill",
        defaults=tiny_run_config(
            output_dir, teacher_model="resnet14", methods=methods, max_train_samples=32, max_eval_samples=32,
            per_device_train_batch_size=16, max_steps=2, logging_steps=1, learning_rate=0.0, report_to="tensorboard", **overrides,
        ),
    )
    return scalar_tags(output_dir)


def test_tensorboard_gets_each_weighted_loss_term_as_a_scalar(tmp_path):
    unweighted = tensorboard_run(tmp_path / "unweighted", {"ce": {"weight": 1.0}, "kd": {"weight": 1.0}, "figkd": {"weight": 1.0}})
    scalars = tensorboard_run(
        tmp_path / "tb", {"ce": {"weight": 0.5}, "kd": {"weight": 0.25}, "figkd": {"weight": 2.0}}, distill_warmup_steps=2
    )
    terms = {tag for tag in scalars if tag.startswith("train/loss_")}
    assert {"train/loss_ce", "train/loss_kd"} <= terms
    figkd_terms = {tag for tag in terms if "figkd" in tag}
    assert figkd_terms, sorted(scalars)
    assert "train/loss" in scalars and "train/learning_rate" in scalars
    # One point per logging step, and the logged total is the sum of the weighted terms.
    for tag in terms | {"train/loss"}:
        assert len(scalars[tag]) == 2, (tag, scalars[tag])
    for step in range(2):
        total = sum(scalars[tag][step] for tag in terms)
        assert abs(total - scalars["train/loss"][step]) < 1e-3 * max(1.0, abs(total))
    # Each term is its weight times the warm-up factor (1/2, then 1) times the unweighted term; CE is not warmed up.
    scale = {"train/loss_ce": (0.5, 0.5), "train/loss_kd": (0.125, 0.25), **{tag: (1.0, 2.0) for tag in figkd_terms}}
    assert set(scale) == terms
    for tag, factors in scale.items():
        for step, factor in enumerate(factors):
            assert unweighted[tag][step] > 0, (tag, unweighted[tag])
            assert scalars[tag][step] == pytest.approx(factor * unweighted[tag][step], rel=1e-4, abs=2e-6), (tag, step)

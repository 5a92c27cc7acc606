"""Logging through ``report_to``: TensorBoard gets every loss term as its own scalar."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hf_freqkd.run import run


def scalar_tags(output_dir: Path) -> dict[str, list[float]]:
    event_files = sorted(output_dir.rglob("events.out.tfevents.*"))
    assert event_files, f"no TensorBoard event file under {output_dir}"
    values: dict[str, list[float]] = {}
    for event_file in event_files:
        accumulator = EventAccumulator(str(event_file)).Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, []).extend(event.value for event in accumulator.Scalars(tag))
    return values


def test_tensorboard_gets_each_loss_term_as_a_scalar(tmp_path):
    output_dir = tmp_path / "tb"
    run(
        "distill",
        defaults={
            "student_model": "resnet8",
            "teacher_model": "resnet14",
            "methods": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5}, "figkd": {}},
            "dataset": "digits",
            "image_size": 8,
            "max_train_samples": 32,
            "max_eval_samples": 32,
            "per_device_train_batch_size": 16,
            "max_steps": 2,
            "logging_steps": 1,
            "eval_strategy": "no",
            "save_strategy": "no",
            "report_to": "tensorboard",
            "use_cpu": True,
            "disable_tqdm": True,
            "output_dir": str(output_dir),
        },
    )
    scalars = scalar_tags(output_dir)
    terms = {tag for tag in scalars if tag.startswith("train/loss_")}
    assert {"train/loss_ce", "train/loss_kd"} <= terms
    assert any(tag.startswith("train/loss_") and "figkd" in tag for tag in terms), sorted(scalars)
    assert "train/loss" in scalars and "train/learning_rate" in scalars
    # One point per logging step, and the logged total is the sum of the weighted terms.
    for tag in terms | {"train/loss"}:
        assert len(scalars[tag]) == 2, (tag, scalars[tag])
    for step in range(2):
        total = sum(scalars[tag][step] for tag in terms)
        assert abs(total - scalars["train/loss"][step]) < 1e-3 * max(1.0, abs(total))

"""Tiny searches: a resnet8 student of a random resnet14 on 16 digits at 8x8, 2 epochs, evaluated on
16 rows held out of train; a trial trains in about a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import tiny_run_config


def tiny_tune_values(output_dir: Path, search: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    values = tiny_run_config(
        output_dir, teacher_model="resnet14", max_steps=-1, num_train_epochs=2, validation_fraction=0.25, logging_steps=50
    )
    values.pop("methods")
    values.pop("eval_strategy")
    values.update(overrides)
    values["search"] = {"methods": ["kd", "figkd"], "n_trials": 2, "student_alone": False, **(search or {})}
    return {key: value for key, value in values.items() if value is not None}


@pytest.fixture
def tune_config(tmp_path):
    """``tune_config(search={...}, folder=..., key=value)``: the path of a tiny tune config written in
    ``tmp_path``, whose search goes to ``tmp_path / folder`` (the study is named after the folder)."""

    def write(search: dict[str, Any] | None = None, folder: str = "search", **overrides: Any) -> Path:
        path = tmp_path / f"{folder}.yaml"
        path.write_text(yaml.safe_dump(tiny_tune_values(tmp_path / folder, search, **overrides)))
        return path

    return write

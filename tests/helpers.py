"""Builders shared by the tests that run a whole (tiny) training through ``run()`` or ``hf-freqkd``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from hf_freqkd.methods import DistillationMethod

#: A run that takes seconds on one CPU core: the CIFAR-zoo resnet8 alone (ce), 16 digits at 8x8,
#: one optimizer step, nothing saved, evaluated or reported.
TINY_RUN: dict[str, Any] = {
    "student_model": "resnet8",
    "methods": {"ce": {}},
    "dataset": "digits",
    "image_size": 8,
    "max_train_samples": 16,
    "max_eval_samples": 16,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "max_steps": 1,
    "eval_strategy": "no",
    "save_strategy": "no",
    "report_to": "none",
    "use_cpu": True,
    "seed": 0,
    "disable_tqdm": True,
}


def tiny_run_config(output_dir: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The config of a tiny digits run (:data:`TINY_RUN`) with ``overrides`` applied on top.

    ``output_dir`` is left out when None (a config that a test completes later). An override replaces
    a key whole: ``methods={"kd": {}}`` drops the default ``ce``. The result is a fresh dict that the
    caller may change, pass to ``run(..., defaults=...)`` or write with :func:`write_run_config`.
    """
    values = {key: (dict(value) if isinstance(value, dict) else value) for key, value in TINY_RUN.items()}
    if output_dir is not None:
        values["output_dir"] = str(output_dir)
    values.update(overrides)
    return values


def write_run_config(path: str | Path, values: dict[str, Any]) -> Path:
    """``values`` as a YAML config file at ``path``; keys set to None are left out (the key's default applies)."""
    path = Path(path)
    path.write_text(yaml.safe_dump({key: value for key, value in values.items() if value is not None}))
    return path


class AlternatingBranches(DistillationMethod):
    """A test method with a branch unused in every step: two heads on the student's logits, one per
    training step in turn, so each step leaves the other head without a gradient. Not registered on
    import (it would join every test that walks the registry): ``register_method`` it where needed."""

    name = "_test_alternating_branches"
    uses_teacher = False
    leaves_parameters_unused = True

    def build(self, student_shapes, teacher_shapes, num_classes):
        self.heads = nn.ModuleList(nn.Linear(num_classes, num_classes) for _ in range(2))
        self.steps_taken = 0

    def forward(self, student, teacher, labels) -> dict[str, torch.Tensor]:
        head = self.heads[self.steps_taken % len(self.heads)]
        self.steps_taken += 1
        return {"loss_alternating_head": F.cross_entropy(head(student.logits.float()), labels)}


def exported_files(carries_code: bool = True) -> set[str]:
    """The files of an exported timm student: weights, config and card, and for a network only hf_freqkd
    registers the modeling code it carries (hf_freqkd.remote_code)."""
    from hf_freqkd.remote_code import MODELING_FILE, NETWORK_FILES

    files = {"README.md", "config.json", "model.safetensors"}
    return files | {Path(name).name for name in NETWORK_FILES} | {MODELING_FILE} if carries_code else files


def refused_before_writing(argv: list[str], capsys, *never_written: Path) -> str:
    """Run ``hf-freqkd argv``, which must refuse its input as bad: exit code 2, one error line (returned),
    and none of ``never_written`` (what the command would write: its output folder, a cache, a file)
    existing afterwards."""
    from hf_freqkd.cli import main

    code = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, lines
    assert len(lines) == 1, lines
    for path in never_written:
        assert not path.exists(), f"{path} was written"
    return lines[0]

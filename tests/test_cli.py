"""The ``hf-freqkd`` command: listing methods, running configs, and refusing bad input early."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_freqkd.cli import main

TINY_RUN = {
    "student_model": "resnet8",
    "dataset": "digits",
    "image_size": 16,
    "max_train_samples": 64,
    "max_eval_samples": 64,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "num_train_epochs": 1,
    "eval_strategy": "no",
    "save_strategy": "no",
    "report_to": "none",
    "use_cpu": True,
    "disable_tqdm": True,
}


def write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_methods_lists_registered_methods_with_options(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "kd:" in out and "ce:" in out
    assert "temperature (float, default 4.0)" in out
    assert "label_smoothing (float, default 0.0)" in out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "hf_freqkd.cli", "methods"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "kd:" in result.stdout


def test_train_teacher_then_distill_through_the_cli(tmp_path, capsys):
    teacher_dir = tmp_path / "teacher"
    config = write_config(tmp_path / "teacher.yaml", {**TINY_RUN, "student_model": "resnet14", "output_dir": str(teacher_dir)})
    assert main(["train-teacher", "--config", str(config), "learning_rate=0.05"]) == 0
    record = json.loads((teacher_dir / "hf_freqkd_run.json").read_text())
    assert record["mode"] == "teacher" and "eval_accuracy" in record["metrics"]
    assert (teacher_dir / "student" / "model.safetensors").is_file()

    student_dir = tmp_path / "student"
    config = write_config(
        tmp_path / "kd.yaml",
        {**TINY_RUN, "output_dir": str(student_dir), "teacher_model": str(teacher_dir / "student"), "methods": {"kd": {}}},
    )
    assert main(["distill", "--config", str(config), "methods.kd.temperature=2"]) == 0
    record = json.loads((student_dir / "hf_freqkd_run.json").read_text())
    assert record["config"]["methods"] == {"kd": {"temperature": 2}}
    assert record["config"]["teacher_model"] == str(teacher_dir / "student")
    assert "evaluation:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "values, override, message",
    [
        ({}, ["learnig_rate=0.1"], "unknown config key 'learnig_rate' (did you mean learning_rate?)"),
        ({"methods": {"fancy": {}}}, [], "unknown method 'fancy'; registered methods: ce, dkd"),
        ({"methods": {"kd": {"temp": 2}}}, [], "method 'kd' has no option 'temp'; valid options: temperature, weight"),
        ({"methods": {"kd": {"temperature": 0}}}, [], "option 'temperature' = 0.0 is invalid: expected a finite number > 0"),
        ({"methods": {"kd": {"weight": -1}}}, [], "option 'weight' = -1.0 is invalid"),
        ({"per_device_train_batch_size": "many"}, [], "config key 'per_device_train_batch_size' = 'many' is invalid: expected an integer"),
        ({"student_model": "resnet9000"}, [], "model 'resnet9000' is not a timm model name"),
        ({"dataset": "digits", "label_column": "digit"}, [], "label column 'digit' is not in the dataset; its columns are: image, label"),
        ({"methods": {"kd": {}}}, [], "kd need a teacher"),
        ({"student_checkpoint": "/nonexistent/weights.safetensors"}, [], "checkpoint '/nonexistent/weights.safetensors' does not exist"),
        ({}, ["teacher_model"], "override 'teacher_model' is invalid: expected key=value"),
    ],
)
def test_bad_input_is_one_clear_error_and_nothing_is_written(tmp_path, capsys, values, override, message):
    output_dir = tmp_path / "out"
    config = write_config(tmp_path / "bad.yaml", {**TINY_RUN, "output_dir": str(output_dir), **values})
    assert main(["distill", "--config", str(config), *override]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not output_dir.exists()


def test_yaml_that_does_not_parse(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("output_dir: x\nmethods: {kd: [\n")
    assert main(["distill", "--config", str(config)]) == 2
    assert f"config file '{config}' is not valid YAML" in capsys.readouterr().err


def test_output_dir_with_another_runs_checkpoints_is_left_alone(tmp_path, capsys):
    output_dir = tmp_path / "out"
    checkpoint = output_dir / "checkpoint-100"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"precious")
    config = write_config(tmp_path / "c.yaml", {**TINY_RUN, "output_dir": str(output_dir), "methods": {"ce": {}}})
    assert main(["distill", "--config", str(config)]) == 2
    assert "already holds checkpoints (checkpoint-100)" in capsys.readouterr().err
    assert (checkpoint / "model.safetensors").read_bytes() == b"precious"
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-100"]


def test_accelerate_launch_runs_the_distill_script(tmp_path):
    import os

    repo = Path(__file__).resolve().parents[1]
    output_dir = tmp_path / "launched"
    config = write_config(tmp_path / "c.yaml", {**TINY_RUN, "output_dir": str(output_dir), "methods": {"kd": {}}, "teacher_model": "resnet14"})
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(repo / "scripts" / "distill.py"), "--config", str(config), "max_train_samples=32",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "student exported to" in result.stdout
    assert (output_dir / "student" / "model.safetensors").is_file()

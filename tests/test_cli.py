"""The ``hf-freqkd`` command: listing methods, running configs, and refusing bad input early."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_freqkd.cli import flags_as_overrides, main
from hf_freqkd.errors import DataError, HubUploadError, TrainingError

from .helpers import tiny_run_config, write_run_config


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
    config = write_run_config(tmp_path / "teacher.yaml", tiny_run_config(teacher_dir, student_model="resnet14"))
    assert main(["train-teacher", "--config", str(config), "learning_rate=0.05"]) == 0
    record = json.loads((teacher_dir / "hf_freqkd_run.json").read_text())
    assert record["mode"] == "teacher" and "eval_accuracy" in record["metrics"]
    assert (teacher_dir / "student" / "model.safetensors").is_file()

    student_dir = tmp_path / "student"
    config = write_run_config(
        tmp_path / "kd.yaml", tiny_run_config(student_dir, teacher_model=str(teacher_dir / "student"), methods={"kd": {}})
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
    config = write_run_config(tmp_path / "bad.yaml", tiny_run_config(output_dir, **values))
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
    config = write_run_config(tmp_path / "c.yaml", tiny_run_config(output_dir))
    assert main(["distill", "--config", str(config)]) == 2
    assert "already holds a run (checkpoint-100)" in capsys.readouterr().err
    assert (checkpoint / "model.safetensors").read_bytes() == b"precious"
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-100"]


def test_accelerate_launch_runs_the_distill_script(tmp_path):
    import os

    repo = Path(__file__).resolve().parents[1]
    output_dir = tmp_path / "launched"
    config = write_run_config(tmp_path / "c.yaml", tiny_run_config(output_dir, methods={"kd": {}}, teacher_model="resnet14"))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(repo / "scripts" / "distill.py"), "--config", str(config), "max_train_samples=32",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "student exported to" in result.stdout
    assert (output_dir / "student" / "model.safetensors").is_file()


def test_methods_prints_each_methods_own_description(capsys):
    from hf_freqkd.methods import available_methods

    assert main(["methods"]) == 0
    headers = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines() if line and not line.startswith(" ")}
    assert headers["fam"] == f"fam: {available_methods()['fam'].description}"
    assert headers["fam_l2l"] == f"fam_l2l: {available_methods()['fam_l2l'].description}"
    assert headers["fam"] != headers["fam_l2l"]


# ----------------------------------------------------------------------------------------------
# Exit codes: bad input 2, a failed run 1, a failed upload 3, an interrupt 130, a bug 1 + traceback


@pytest.mark.parametrize(
    "error, code, line",
    [
        (DataError("label column 'x' is missing"), 2, "hf-freqkd distill: error: label column 'x' is missing"),
        (TrainingError("loss term 'loss_kd' is nan at step 3"), 1, "hf-freqkd distill: error: loss term 'loss_kd' is nan at step 3"),
        (OSError(28, "No space left on device"), 1, "hf-freqkd distill: error: [Errno 28] No space left on device"),
        (HubUploadError("training finished, but\nthe Hub said no"), 3, "hf-freqkd distill: error: training finished, but the Hub said no"),
        (KeyboardInterrupt(), 130, "hf-freqkd distill: interrupted (Ctrl-C)"),
    ],
)
def test_each_kind_of_failure_is_one_line_with_its_exit_code(monkeypatch, capsys, error, code, line):
    import hf_freqkd.run

    def failing_run(*args, **kwargs):
        raise error

    monkeypatch.setattr(hf_freqkd.run, "run", failing_run)
    assert main(["distill", "output_dir=unused"]) == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_after_ctrl_c_on_a_terminal_the_line_starts_below_the_echoed_ctrl_c(monkeypatch):
    import io

    import hf_freqkd.run

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def interrupted_run(*args, **kwargs):
        raise KeyboardInterrupt

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(hf_freqkd.run, "run", interrupted_run)
    assert main(["distill", "output_dir=unused"]) == 130
    assert terminal.getvalue() == "\nhf-freqkd distill: interrupted (Ctrl-C)\n"


def test_a_bug_is_reported_with_its_traceback_not_as_bad_input(monkeypatch, capsys):
    import hf_freqkd.run

    def buggy_run(*args, **kwargs):
        return {}["no such key"] if kwargs else int("not a number")

    monkeypatch.setattr(hf_freqkd.run, "run", buggy_run)
    assert main(["distill", "output_dir=unused"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "in buggy_run" in err and err.strip().splitlines()[-1].startswith("ValueError: invalid literal for int()")


def test_under_torch_elastic_the_error_goes_to_its_error_file_and_only_the_main_rank_prints(tmp_path, monkeypatch, capsys):
    import hf_freqkd.cli

    monkeypatch.setattr(hf_freqkd.cli, "_OTHER_RANKS_EXIT_DELAY_SECONDS", 0)
    error_files = {rank: tmp_path / f"error_{rank}.json" for rank in ("0", "1")}
    expected = "hf-freqkd distill: error: unknown config key 'learnig_rate' (did you mean learning_rate?)"
    for rank, error_file in error_files.items():
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
        assert main(["distill", f"output_dir={tmp_path / 'out'}", "learnig_rate=0.1"]) == 2
        printed = capsys.readouterr().err.splitlines()
        assert len(printed) == (1 if rank == "0" else 0) and all(line.startswith(expected) for line in printed)
        # torch elastic shows extraInfo.py_callstack as the failure's "traceback" in its summary.
        recorded = json.loads(error_file.read_text())["message"]
        assert recorded["message"].startswith(expected) and recorded["extraInfo"]["py_callstack"] == recorded["message"]


# ----------------------------------------------------------------------------------------------
# --key value and --key=value, as HfArgumentParser scripts take them


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--num_train_epochs", "3"], ["num_train_epochs=3"]),
        (["--num_train_epochs=3"], ["num_train_epochs=3"]),
        (["--num-train-epochs", "3"], ["num_train_epochs=3"]),
        (["--learning_rate", "-1"], ["learning_rate=-1"]),
        (["--methods.kd.temperature", "2"], ["methods.kd.temperature=2"]),
        (["--bf16"], ["bf16=true"]),
        (["--bf16", "learning_rate=0.1"], ["bf16=true", "learning_rate=0.1"]),
        (["--use_cpu", "no", "--bf16=yes"], ["use_cpu=false", "bf16=true"]),
        (["seed=3", "--config", "c.yaml", "--seed", "4"], ["--config", "c.yaml", "seed=3", "seed=4"]),
        (["--config=c.yaml", "--confg", "x.yaml"], ["--config=c.yaml", "--confg", "x.yaml"]),
    ],
)
def test_flags_become_overrides(arguments, expected):
    assert flags_as_overrides(arguments) == expected


def test_a_config_key_flag_without_its_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "output_dir=x", "--learning_rate"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "hf-freqkd: error: --learning_rate needs a value: --learning_rate VALUE, --learning_rate=VALUE or "
        "learning_rate=VALUE (see hf-freqkd --help)"
    ]


def test_a_flag_that_is_no_option_gets_a_did_you_mean(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit-prompts", "--confg", "x.yaml"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --confg (did you mean --config?)" in capsys.readouterr().err


def test_flags_set_config_keys_of_a_run(tmp_path):
    output_dir = tmp_path / "flags"
    config = write_run_config(tmp_path / "c.yaml", tiny_run_config())
    assert main(["distill", "--config", str(config), "--output_dir", str(output_dir), "--max_steps", "2", "--learning_rate=0.01", "--seed=7"]) == 0
    record = json.loads((output_dir / "hf_freqkd_run.json").read_text())
    assert (record["training"]["max_steps"], record["training"]["learning_rate"], record["training"]["seed"]) == (2, 0.01, 7)


# ----------------------------------------------------------------------------------------------
# Ctrl-C: one line with the step and how to resume, exit 130, the run record says "interrupted"


def test_ctrl_c_during_training_is_one_line_exit_130_and_recorded(tmp_path):
    import os
    import signal

    repo = Path(__file__).resolve().parents[1]
    output_dir = tmp_path / "interrupted"
    config = write_run_config(
        tmp_path / "c.yaml",
        tiny_run_config(save_strategy="steps", save_steps=1, save_total_limit=1, logging_steps=1, disable_tqdm=False),
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    # Through the accelerate script, with the --key value form users of such scripts type.
    command = [sys.executable, str(repo / "scripts" / "distill.py"), "--config", str(config), "--output_dir", str(output_dir), "--max_steps", "100000"]
    # Bytes: text mode would turn the carriage returns the progress bar redraws its line with into newlines.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        for line in process.stdout:  # a logged step, once a checkpoint exists to resume from
            if b"'loss'" in line and any(output_dir.glob("checkpoint-*/trainer_state.json")):
                break
        process.send_signal(signal.SIGINT)
        err = process.communicate(timeout=120)[1].decode()
    finally:
        process.kill()
    assert process.returncode == 130, err[-3000:]
    # The progress bar was on: the message starts after a newline, not glued to the bar's unfinished
    # line, and stays the last line (the bar is not drawn again after it).
    before, newline, last = err.removesuffix("\n").rpartition("\n")
    assert "\r" in before and newline and "hf-freqkd" not in before, err[-3000:]
    match = re.fullmatch(
        r"hf-freqkd distill: interrupted \(Ctrl-C\) at step (\d+); to continue from (.+), "
        r"run the same command with resume_from_checkpoint=true",
        last,
    )
    assert match, err[-3000:]
    step = int(match.group(1))
    assert step >= 1 and Path(match.group(2)).parent == output_dir and Path(match.group(2)).is_dir()
    record = json.loads((output_dir / "hf_freqkd_run.json").read_text())
    assert (record["status"], record["interrupted_at_step"]) == ("interrupted", step)


# ----------------------------------------------------------------------------------------------
# accelerate launch: the error line is not lost in torch elastic's failure summary


def test_accelerate_launch_with_two_processes_shows_the_error_once_and_in_the_root_cause(tmp_path):
    import os

    repo = Path(__file__).resolve().parents[1]
    config = write_run_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "out", methods={"kd": {"temperature": -1}}))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--monitor_interval", "0.1",
        str(repo / "scripts" / "distill.py"), "--config", str(config),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    expected = "hf-freqkd distill: error: method 'kd': option 'temperature' = -1.0 is invalid"
    lines = result.stderr.splitlines()
    assert result.returncode != 0
    assert [line for line in lines if line.startswith("hf-freqkd")] == [lines[0]] and lines[0].startswith(expected)
    # torch elastic's summary names our line as the root cause, not "To enable traceback see ...".
    root_cause = result.stderr.split("Root Cause")[1]
    assert f"traceback : {expected}" in root_cause and "To enable traceback" not in result.stderr
    assert not (tmp_path / "out").exists()

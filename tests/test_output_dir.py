"""The output_dir guard: no run is overwritten, and a resumed run keeps its recorded settings."""

import json

import pytest

from hf_freqkd.config import DataArguments, DistillationConfig, ModelArguments
from hf_freqkd.errors import ConfigError, MissingPathError
from hf_freqkd.output_dir import RUN_RECORD, check_output_dir, training_settings, write_record


def _settings(tmp_path, **changes):
    args = DistillationConfig(output_dir=str(tmp_path / "run"), learning_rate=changes.pop("learning_rate", 0.05),
                              methods=changes.pop("methods", {"kd": {"temperature": 4.0}}), report_to="none", **changes)
    return training_settings(args, ModelArguments(student_model="resnet8"), DataArguments(dataset="digits"))


def _finished_run(tmp_path, checkpoints=True, **changes):
    run = tmp_path / "run"
    if checkpoints:
        (run / "checkpoint-10").mkdir(parents=True)
    write_record(run, {"status": "finished", "settings": _settings(tmp_path, **changes)})
    return run


def test_settings_hold_training_keys_and_not_output_or_logging_keys(tmp_path):
    settings = _settings(tmp_path)
    assert settings["learning_rate"] == 0.05 and settings["methods"] == {"kd": {"temperature": 4.0}}
    assert settings["student_model"] == "resnet8"
    for key in ("output_dir", "logging_steps", "eval_strategy", "save_strategy", "report_to", "hub_token", "push_to_hub"):
        assert key not in settings


def test_resuming_with_changed_training_settings_names_each_key_old_and_new(tmp_path):
    run = _finished_run(tmp_path)
    new = _settings(tmp_path, learning_rate=0.1, methods={"kd": {"temperature": 2.0}})
    with pytest.raises(ConfigError) as error:
        check_output_dir(run, resume=True, settings=new)
    message = str(error.value)
    assert "learning_rate: 0.05 -> 0.1" in message
    assert "methods: {'kd': {'temperature': 4.0}} -> {'kd': {'temperature': 2.0}}" in message


def test_resuming_may_change_logging_evaluation_and_output(tmp_path):
    run = _finished_run(tmp_path)
    check_output_dir(run, resume="true", settings=_settings(tmp_path, logging_steps=3, eval_strategy="no", save_total_limit=2))


def test_resuming_from_a_checkpoint_path_compares_with_that_run(tmp_path):
    run = _finished_run(tmp_path)
    with pytest.raises(ConfigError, match="learning_rate: 0.05 -> 0.2"):
        check_output_dir(tmp_path / "elsewhere", resume=str(run / "checkpoint-10"), settings=_settings(tmp_path, learning_rate=0.2))


def test_finished_run_without_checkpoints_is_not_overwritten(tmp_path):
    run = _finished_run(tmp_path, checkpoints=False)
    (run / "student").mkdir()
    (run / "student" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a run \(an exported student in student/, hf_freqkd_run.json of a finished run\)"):
        check_output_dir(run)
    assert json.loads((run / RUN_RECORD).read_text())["status"] == "finished"


def test_checkpoints_without_resume_are_refused_with_the_resume_hint(tmp_path):
    run = _finished_run(tmp_path)
    with pytest.raises(ConfigError, match="checkpoint-10.*resume_from_checkpoint=true"):
        check_output_dir(run)


def test_empty_or_unrelated_folder_is_fine(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    check_output_dir(tmp_path / "run")
    check_output_dir(tmp_path / "new")


def test_missing_resume_path_and_resume_without_checkpoints(tmp_path):
    with pytest.raises(MissingPathError, match="does not exist"):
        check_output_dir(tmp_path / "run", resume=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        check_output_dir(tmp_path / "run", resume=True)


# -- through the command line: the two ways users lost or mislabelled a run ------------------------

def _cli(tmp_path, *overrides):
    from hf_freqkd.cli import main

    base = [
        "student_model=resnet8", "teacher_model=resnet8", "dataset=digits", "image_size=8", "max_train_samples=32",
        "max_eval_samples=32", "num_train_epochs=1", "per_device_train_batch_size=16", "report_to=none",
        "use_cpu=true", "disable_tqdm=true", "methods={ce: {weight: 0.1}, kd: {weight: 0.9, temperature: 4}}",
        "learning_rate=0.05", f"output_dir={tmp_path / 'run'}",
    ]
    return main(["distill", *base, *overrides])


def test_cli_resume_with_a_changed_config_is_refused_and_the_run_stays_as_it_was(tmp_path, capsys):
    assert _cli(tmp_path, "save_strategy=epoch", "eval_strategy=epoch") == 0
    record_before = (tmp_path / "run" / RUN_RECORD).read_text()
    card_before = (tmp_path / "run" / "student" / "README.md").read_text()
    code = _cli(tmp_path, "save_strategy=epoch", "eval_strategy=epoch", "methods.kd.temperature=2", "learning_rate=0.1",
                "resume_from_checkpoint=true")
    error = capsys.readouterr().err
    assert code == 2
    assert "learning_rate: 0.05 -> 0.1" in error and "'temperature': 4}} -> " in error and "'temperature': 2}}" in error
    assert (tmp_path / "run" / RUN_RECORD).read_text() == record_before
    assert (tmp_path / "run" / "student" / "README.md").read_text() == card_before
    # The same settings resume (here: nothing left to train), and may change logging.
    assert _cli(tmp_path, "save_strategy=epoch", "eval_strategy=epoch", "resume_from_checkpoint=true", "logging_steps=7") == 0


def test_cli_refuses_a_folder_holding_a_finished_run_without_checkpoints(tmp_path, capsys):
    assert _cli(tmp_path, "save_strategy=no", "eval_strategy=no") == 0
    weights = (tmp_path / "run" / "student" / "model.safetensors").read_bytes()
    assert _cli(tmp_path, "save_strategy=no", "eval_strategy=no", "seed=1") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "student" / "model.safetensors").read_bytes() == weights


def test_a_record_alone_does_not_block_starting_again(tmp_path):
    write_record(tmp_path / "run", {"status": "interrupted", "settings": _settings(tmp_path)})
    check_output_dir(tmp_path / "run")

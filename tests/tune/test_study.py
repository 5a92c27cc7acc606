"""``hf-freqkd tune`` on Optuna: resuming after kill -9, workers sharing a study, pruning, failures,
duplicates, the report and best.yaml."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from hf_freqkd.benchmark.quality import load_benchmark_config
from hf_freqkd.cli import main
from hf_freqkd.config import parse_config
from hf_freqkd.tune.config import load_tune_config
from hf_freqkd.tune.study import Tuner

REPO = Path(__file__).resolve().parents[2]
SEARCH = "search"  # the study's folder (and name) in every tiny config


def cli(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hf_freqkd.cli", "tune", "--config", str(config), *extra]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def trial_list(folder: Path) -> list[dict[str, str]]:
    """trials.csv without what may differ between two runs of the same trials: numbers, times, notes."""
    with open(folder / "trials.csv") as handle:
        return [{k: v for k, v in row.items() if k not in ("trial", "seconds", "note")} for row in csv.DictReader(handle)]


def study_of(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")


def tuner_for(config: Path, lines: list[str]) -> Tuner:
    tuner = Tuner(load_tune_config(config), log=lines.append)
    tuner.prepare()
    tuner.open_study()
    return tuner


def test_a_search_killed_mid_trial_and_run_again_ends_with_the_uninterrupted_trial_list(tune_config, tmp_path, capsys, one_thread):
    search = {"n_trials": 4}
    assert main(["tune", "--config", str(tune_config(search, folder="whole"))]) == 0

    killed = tune_config(search, folder="killed")
    process = subprocess.Popen(cli(killed), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    database, running = tmp_path / "killed" / "study.db", None
    try:
        deadline = time.monotonic() + 120
        while running is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            try:
                trials = study_of(tmp_path / "killed").get_trials(deepcopy=False) if database.is_file() else []
            except Exception:  # noqa: BLE001 - the study is being created, or its database is locked a moment
                continue
            # Mid-trial: the second trial has started training (its settings are drawn).
            running = next((t for t in trials if t.number >= 1 and t.state.name == "RUNNING" and t.params), None)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert running is not None, "the search finished or stalled before its second trial ran"
    assert study_of(tmp_path / "killed").trials[running.number].state.name == "RUNNING"

    capsys.readouterr()
    assert main(["tune", "--config", str(killed)]) == 0  # the same command again
    assert f"trial {running.number} was interrupted" in capsys.readouterr().out
    assert trial_list(tmp_path / "killed") == trial_list(tmp_path / "whole")
    notes = [row["note"] for row in csv.DictReader(open(tmp_path / "killed" / "trials.csv"))]
    assert f"rerun of interrupted trial {running.number}" in notes


def test_two_workers_share_one_study_and_never_train_the_same_settings_twice(tune_config, tmp_path, capsys):
    # Trials of a few seconds: the second worker, starting a moment after the first, still finds one to train.
    config = tune_config({"n_trials": 3}, num_train_epochs=6)
    assert main(["tune", "--config", str(config), "--workers", "2"]) == 0
    trials = [t for t in study_of(tmp_path / SEARCH).trials if "over_budget" not in t.user_attrs]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({t.user_attrs["settings_key"] for t in trials}) == 3
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes trained
    assert "2 workers share the study" in capsys.readouterr().out


def test_a_trial_below_the_median_is_pruned_at_its_first_evaluation(tune_config):
    config = tune_config({"n_trials": 2, "pruner": "median", "pruner_startup_trials": 1}, num_train_epochs=3)
    lines: list[str] = []
    tuner = tuner_for(config, lines)
    # A finished trial that was perfect at every evaluation: any real trial falls below the median at once.
    distributions = {
        "method": optuna.distributions.CategoricalDistribution(["kd", "figkd"]),
        "kd.weight": optuna.distributions.FloatDistribution(0.1, 10.0, log=True),
        "kd.temperature": optuna.distributions.FloatDistribution(1.0, 8.0),
    }
    tuner.study.add_trial(
        optuna.trial.create_trial(
            params={"method": "kd", "kd.weight": 1.0, "kd.temperature": 4.0}, distributions=distributions, value=1.0,
            intermediate_values={step: 1.0 for step in range(100)},
        )
    )
    tuner.run_trials()
    pruned = tuner.study.trials[1]
    assert pruned.state.name == "PRUNED"
    assert pruned.user_attrs["epochs"] == 1.0 and len(pruned.intermediate_values) == 1  # 1 of 3 epochs
    assert "pruned after epoch 1" in lines[-1]
    record = json.loads((tuner.config.output_dir / "trial-001" / "hf_freqkd_run.json").read_text())
    assert record["status"] == "pruned" and record["pruned_at_epoch"] == 1.0


def test_a_diverging_trial_is_recorded_as_failed_and_the_search_goes_on(tune_config):
    space = {"methods": [{"kd": {"weight": 1.0, "temperature": 4.0}}], "params": {"learning_rate": [1.0e30, 0.05]}, "pruner": "none"}
    lines: list[str] = []
    tuner = tuner_for(tune_config(space), lines)
    tuner.study.enqueue_trial({"learning_rate": 1.0e30})
    tuner.study.enqueue_trial({"learning_rate": 0.05})
    tuner.run_trials()
    failed, complete = tuner.study.trials
    assert failed.state.name == "FAIL" and "is nan at step" in failed.user_attrs["error"]
    assert complete.state.name == "COMPLETE"
    assert "failed after" in lines[0] and "is nan" in lines[0]


def test_settings_equal_to_an_earlier_trials_are_not_trained_again(tune_config):
    # figkd keeping every band computes kd's loss: the same settings as kd at the same weight and temperature.
    space = {
        "methods": [
            {"kd": {"weight": 1.0, "temperature": [2.0, 4.0]}},
            {"figkd": {"weight": 1.0, "temperature": [2.0, 4.0], "bands": "all", "levels": 1}},
        ],
        "pruner": "none",
    }
    lines: list[str] = []
    tuner = tuner_for(tune_config(space), lines)
    for method, temperature in (("figkd", 4.0), ("kd", 4.0), ("kd", 2.0)):
        tuner.study.enqueue_trial({"method": method, f"{method}.temperature": temperature})
    tuner.run_trials()
    first, duplicate, other = tuner.study.trials
    assert duplicate.user_attrs["duplicate_of"] == 0 and duplicate.value == first.value and duplicate.user_attrs["seconds"] == 0
    assert other.state.name == "COMPLETE" and "duplicate_of" not in other.user_attrs
    assert "kd weight=1 temperature=4 (searched as figkd)" in lines[0]
    assert "same settings as trial 0" in lines[1] and "not trained" in lines[1]
    assert not (tuner.config.output_dir / "trial-001").exists()


def test_a_search_reports_every_trial_and_writes_a_best_config_that_distill_and_benchmark_take(tune_config, tmp_path, capsys):
    import timm
    from timm.models import save_for_hf

    teacher = tmp_path / "teacher"
    save_for_hf(timm.create_model("resnet14", num_classes=10), str(teacher), safe_serialization=True)
    config = tune_config({"n_trials": 2, "student_alone": True}, teacher_model=str(teacher))
    assert main(["tune", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / SEARCH
    progress = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(progress) == 2 and all("best so far" in line for line in progress)
    assert "student-alone trainings" in out and "next: hf-freqkd benchmark quality --config" in out
    # The teacher's logits: one cache, built before the first trial, read by the kd and figkd trials.
    assert (folder / "teacher_cache" / "seed0" / "logits" / "teacher_cache.json").is_file()
    records = [yaml.safe_load((folder / f"trial-00{i}" / "hf_freqkd_run.json").read_text()) for i in range(2)]
    assert all(record["config"]["teacher_cache"] == str(folder.resolve() / "teacher_cache" / "seed0" / "logits") for record in records)
    rows = list(csv.DictReader(open(folder / "trials.csv")))
    assert [row["state"] for row in rows] == ["complete", "complete"] and all(float(row["objective"]) >= 0 for row in rows)
    assert "| trial | method | settings | top-1 (%) | state | seconds | note |" in (folder / "trials.md").read_text()
    assert (folder / "trials.png").stat().st_size > 10_000
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert "validation_fraction" not in best and "search" not in best and set(best["methods"]) & {"kd", "figkd"}
    args, _, data_args = parse_config(str(folder / "best.yaml"))
    assert args.output_dir == str(folder / "best") and data_args.validation_fraction is None
    benchmark = load_benchmark_config(folder / "best_benchmark.yaml")
    assert [m.label for m in benchmark.methods] == ["ce", "tuned"] and benchmark.seeds == [0, 1, 2]
    assert benchmark.student_run_config(benchmark.methods[1], 0)["methods"] == best["methods"]


def test_freekd_prompts_are_fitted_once_per_setting_and_named_in_best_yaml(tune_config, tmp_path, capsys):
    prompts = {"masks": "prompts", "prompt_steps": 2, "prompt_report_batches": 1, "prompt_batch_size": 8}
    space = {"methods": [{"freekd": {**prompts, "weight": [1.0, 2.0]}}], "pruner": "none"}
    config = tune_config(space)
    assert main(["tune", "--config", str(config)]) == 0
    fitted = list((tmp_path / SEARCH / "prompts").glob("*.safetensors"))
    assert len(fitted) == 1
    trials = [t for t in study_of(tmp_path / SEARCH).trials if "duplicate_of" not in t.user_attrs]
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert sum(1 for t in trials if "prompt_seconds" in t.user_attrs) == 1  # the first trial fitted them
    assert yaml.safe_load((tmp_path / SEARCH / "best.yaml").read_text())["methods"]["freekd"]["prompts_path"] == str(fitted[0])
    # A teacher given by architecture is no benchmark teacher: the command printed trains best.yaml with distill.
    assert "for seed in 0 1 2; do hf-freqkd distill --config" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def one_thread():
    """Train with one torch thread, as the subprocesses do (OMP_NUM_THREADS=1): the same sums in the same order."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Bad input to ``hf-freqkd tune``: one line naming the bad value, exit code 2, before any trial and
without writing the search's folder."""

from __future__ import annotations

import pytest

from hf_freqkd.tune.config import load_tune_config
from hf_freqkd.tune.study import Tuner
from tests.helpers import refused_before_writing


@pytest.mark.parametrize(
    "search, overrides, words",
    [
        ({"methods": ["kd", "telepathy"]}, {}, "unknown method 'telepathy'"),
        ({"methods": [{"kd": {"temprature": [1.0, 2.0]}}]}, {}, "method 'kd' has no option 'temprature' (did you mean temperature?)"),
        ({"methods": [{"kd": {"temperature": {"low": 0, "high": 4}}}, "figkd"]}, {}, "kd.temperature = 0.0 (range {high: 4.0, log: false, low: 0.0})"),
        ({"methods": [{"figkd": {"levels": {"low": 1, "high": 5}}}, "kd"]}, {}, "figkd with weight=16.0, temperature=8.0, levels=5, bands=all cannot be built: option 'levels' = 5 is invalid"),
        ({"methods": [{"kd": {"weight": 1.0, "temperature": 4.0}}]}, {}, "the search space is empty"),
        ({"params": {"image_size": [8, 16]}}, {}, "'image_size' is not a training argument"),
        ({"n_trails": 4}, {}, "unknown search key 'n_trails' (did you mean n_trials?)"),
        ({}, {"validation_fraction": None}, "validation_fraction is not set"),
        ({}, {"validation_fraction": None, "eval_split": "test"}, "eval_split = 'test'"),
        ({}, {"validation_fraction": 0.0001}, "validation_fraction = 0.0001 leaves no usable validation split"),
    ],
    ids=["unknown method", "unknown option", "range outside the valid values", "range the models cannot build", "empty space",
         "not a training argument", "unknown search key", "no validation split", "test split", "no validation rows"],
)
def test_bad_input_is_refused_before_any_trial(tune_config, tmp_path, capsys, search, overrides, words):
    config = tune_config(search, **overrides)
    line = refused_before_writing(["tune", "--config", str(config)], capsys, tmp_path / "search")
    assert words in line, line


@pytest.mark.parametrize(
    "storage, words",
    [
        ("sqlite:////no/such/folder/study.db", "folder '/no/such/folder' does not exist"),
        ("postgresql://user:secret@127.0.0.1:1/study", "cannot be opened"),
        ("nosuchdialect://host/db", "cannot be opened"),
    ],
)
def test_an_unreachable_storage_is_refused(tune_config, tmp_path, capsys, storage, words):
    line = refused_before_writing(["tune", "--config", str(tune_config()), "--storage", storage], capsys, tmp_path / "search")
    assert words in line and storage in line


def test_an_existing_study_of_another_space_is_refused_naming_the_difference(tune_config, tmp_path, capsys):
    first = Tuner(load_tune_config(tune_config({"methods": ["kd", "figkd"]})), log=lambda line: None)
    first.prepare()
    first.open_study()  # the study exists, with its space, and no trial yet
    other = tune_config({"methods": [{"kd": {"temperature": {"low": 1, "high": 3}}}, "figkd"]})
    line = refused_before_writing(["tune", "--config", str(other)], capsys, tmp_path / "search" / "trial-000")
    assert "study 'search'" in line and "searches another space" in line
    assert "kd.temperature: {high: 8.0, log: false, low: 1.0} in the study, {high: 3.0, log: false, low: 1.0} in this config" in line

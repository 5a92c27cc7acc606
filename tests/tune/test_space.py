"""The search space: each method's default space, the syntax, the checks made before any trial."""

from __future__ import annotations

import optuna
import pytest

from hf_freqkd.config import DistillationConfig
from hf_freqkd.errors import ConfigError, MethodOptionsError
from hf_freqkd.methods import available_methods
from hf_freqkd.tune.space import Choice, Fixed, Range, SearchSpace, reported_methods, settings_key


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_every_method_declares_a_default_space_its_options_accept(name):
    space = SearchSpace.parse([name, "kd"] if name != "kd" else ["kd", "ce"])
    space.check()  # every range end and choice builds the options


def test_a_list_of_method_names_alone_is_a_space_of_their_default_spaces():
    space = SearchSpace.parse(["kd", "figkd", "fam_l2l"])
    space.check(DistillationConfig(output_dir="unused", use_cpu=True))
    assert space.methods["kd"]["temperature"] == Range(1.0, 8.0)
    assert space.methods["figkd"]["levels"] == Range(1, 3, integer=True)
    assert space.methods["figkd"]["bands"] == Choice(("high", "all"))
    settings = space(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    (chosen,) = settings["methods"]
    assert chosen in ("kd", "figkd", "fam_l2l") and settings["methods"][chosen]


def test_a_candidates_entries_replace_its_defaults_option_by_option():
    space = SearchSpace.parse([{"figkd": {"bands": "high", "levels": [1, 2], "weight": {"low": 1, "high": 4, "log": True}}}])
    specs = space.methods["figkd"]
    assert specs["bands"] == Fixed("high") and specs["levels"] == Choice((1, 2))
    assert specs["weight"] == Range(1.0, 4.0, log=True) and specs["temperature"] == Range(1.0, 8.0)


@pytest.mark.parametrize(
    "methods, params, words",
    [
        (["kd", "telepathy"], None, "unknown method 'telepathy'"),
        ([{"kd": {"temprature": {"low": 1, "high": 4}}}], None, "no option 'temprature' (did you mean temperature?)"),
        ([{"kd": {"temperature": {"low": 0, "high": 4}}}, "figkd"], None, "kd.temperature = 0.0"),
        ([{"figkd": {"bands": ["high", [0, 5]], "levels": 2}}, "kd"], None, "figkd.bands = [0, 5]"),
        ([{"figkd": {"bands": {"low": 0, "high": 2}}}], None, "figkd.bands takes"),
        ([{"kd": {"temperature": {"low": 4, "high": 1}}}], None, "expected finite low < high"),
        (["kd", "figkd"], {"learning_rate": {"low": -1.0, "high": 0.1}}, "learning_rate = -1.0"),
        (["kd", "figkd"], {"image_size": [8, 16]}, "'image_size' is not a training argument"),
        (["kd", "figkd"], {"output_dir": ["a", "b"]}, "'output_dir' is set by the search itself"),
        ([{"kd": {"weight": 1.0, "temperature": 4.0}}], None, "the search space is empty"),
        ([], None, "the search space is empty"),
    ],
)
def test_a_bad_space_is_refused_naming_the_value(methods, params, words):
    with pytest.raises((ConfigError, MethodOptionsError)) as error:
        SearchSpace.parse(methods, params).check(DistillationConfig(output_dir="unused", use_cpu=True))
    assert words in str(error.value)


def test_figkd_keeping_every_band_is_reported_and_deduplicated_as_kd():
    figkd = {"figkd": {"bands": "all", "levels": 2, "weight": 2.0, "temperature": 3.0, "wavelet": "db2"}}
    methods, searched_as = reported_methods(figkd)
    assert methods == {"kd": {"weight": 2.0, "temperature": 3.0}} and searched_as == {"kd": "figkd"}
    assert settings_key({"methods": figkd}) == settings_key({"methods": {"ce": {}, "kd": {"weight": 2, "temperature": 3.0}}})
    assert settings_key({"methods": figkd}) != settings_key({"methods": {"kd": {"weight": 2.0, "temperature": 4.0}}})
    assert reported_methods({"figkd": {"bands": "high"}})[1] == {}


def test_a_stored_space_is_compared_parameter_by_parameter():
    old = SearchSpace.parse(["kd", "figkd"]).describe()
    new = SearchSpace.parse([{"kd": {"temperature": {"low": 1, "high": 4}}}, "fam"])
    differences = new.differences(old)
    assert "kd.temperature: {high: 8.0, log: false, low: 1.0} in the study, {high: 4.0, log: false, low: 1.0} in this config" in differences
    assert "method: {choices: [kd, figkd]} in the study, {choices: [kd, fam]} in this config" in differences
    assert any(d.startswith("fam.weight (new in this config") for d in differences)
    assert any(d.startswith("figkd.levels (searched by the study, not by this config") for d in differences)


def test_ray_samples_decode_to_the_same_settings():
    ray = pytest.importorskip("ray.tune")
    space = SearchSpace.parse([{"figkd": {"bands": ["high", [0, 1]], "levels": 1}}, "kd"])
    config = space(None)
    assert isinstance(config["figkd.bands"], ray.search.sample.Categorical)
    sampled = {"method": "figkd", "figkd.bands": "[0, 1]", "figkd.weight": 2.0, "figkd.temperature": 3.0, "kd.weight": 1.0, "kd.temperature": 2.0}
    assert space.settings_from_ray(sampled) == {"methods": {"figkd": {"weight": 2.0, "temperature": 3.0, "levels": 1, "bands": [0, 1]}}}

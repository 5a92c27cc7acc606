"""The method registry: registering, looking up and normalising the forms a config may use."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from hf_freqkd.methods import DistillationMethod, MethodOptions, LogitsAndFeatures, available_methods, register_method
from hf_freqkd.errors import MethodOptionsError
from hf_freqkd.methods.registry import _METHODS, build_methods, get_method_class, method_description, normalize_method_specs


@pytest.fixture
def clean_registry():
    """Whatever a test registers is gone afterwards."""
    saved = dict(_METHODS)
    yield _METHODS
    _METHODS.clear()
    _METHODS.update(saved)


@dataclass
class ScaleOptions(MethodOptions):
    scale: float = field(default=2.0, metadata={"help": "Multiplier."})


def make_method_class(name: str = "test_scaled_l1"):
    class ScaledL1(DistillationMethod):
        options_class = ScaleOptions

        def forward(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures | None, labels: torch.Tensor):
            return {"loss_scaled_l1": self.options.scale * (student.logits - teacher.logits).abs().mean()}

    ScaledL1.name = name
    return ScaledL1


def test_register_custom_method_and_build_it(clean_registry):
    cls = make_method_class()
    assert "test_scaled_l1" not in available_methods()
    assert register_method(cls) is cls
    assert available_methods()["test_scaled_l1"] is cls
    assert get_method_class("test_scaled_l1") is cls

    methods = build_methods({"test_scaled_l1": {"scale": 3, "weight": 0.5}})
    assert [type(m) for m in methods][1] is cls
    custom = methods[1]
    assert custom.options.scale == 3.0 and custom.weight == 0.5
    student = LogitsAndFeatures(logits=torch.tensor([[1.0, 2.0]]))
    teacher = LogitsAndFeatures(logits=torch.tensor([[0.0, 0.0]]))
    assert custom(student, teacher, torch.tensor([0]))["loss_scaled_l1"].item() == pytest.approx(3 * 1.5)


def test_registry_is_restored_after_the_test_above():
    assert "test_scaled_l1" not in _METHODS
    with pytest.raises(ValueError, match="unknown method 'test_scaled_l1'"):
        get_method_class("test_scaled_l1")


def test_available_methods_are_sorted_and_include_builtins():
    names = list(available_methods())
    assert names == sorted(names)
    assert {"ce", "kd"} <= set(names)


def test_registering_is_idempotent_for_the_same_class(clean_registry):
    cls = make_method_class()
    register_method(cls)
    register_method(cls)
    assert _METHODS["test_scaled_l1"] is cls


def test_same_name_for_another_class_is_rejected(clean_registry):
    with pytest.raises(ValueError, match="'kd' is already registered"):
        register_method(make_method_class("kd"))
    assert _METHODS["kd"].__name__ == "KnowledgeDistillation"


def test_class_without_name_is_rejected(clean_registry):
    class Nameless(DistillationMethod):
        pass

    with pytest.raises(TypeError, match="Nameless must set a class attribute `name`"):
        register_method(Nameless)


def test_custom_options_are_validated(clean_registry):
    register_method(make_method_class())
    with pytest.raises(ValueError, match="valid options: scale, weight"):
        build_methods({"test_scaled_l1": {"sacle": 1}})
    with pytest.raises(ValueError, match="option 'weight' = -0.5 is invalid"):
        build_methods({"test_scaled_l1": {"weight": -0.5}})


@pytest.mark.parametrize(
    "specs, expected_ce",
    [
        ({"kd": {"temperature": 4}, "ce": {"weight": 0.1}}, {"weight": 0.1}),
        ([{"name": "kd", "temperature": 4}, {"name": "ce", "weight": 0.1}], {"weight": 0.1}),
        ([{"name": "kd", "temperature": 4}, "ce"], {}),
    ],
)
def test_normalize_forms(specs, expected_ce):
    normalized = normalize_method_specs(specs)
    assert list(normalized) == ["kd", "ce"]
    assert normalized["kd"] == {"temperature": 4}
    assert normalized["ce"] == expected_ce


def test_normalize_list_of_names_and_comma_string():
    assert normalize_method_specs(["ce", "kd"]) == {"ce": {}, "kd": {}}
    assert normalize_method_specs("ce, kd") == {"ce": {}, "kd": {}}
    assert normalize_method_specs({"kd": None}) == {"kd": {}}
    assert normalize_method_specs(None) == {}


def test_normalize_does_not_modify_its_input():
    entry = {"name": "kd", "temperature": 4}
    normalize_method_specs([entry])
    assert entry == {"name": "kd", "temperature": 4}


@pytest.mark.parametrize("specs", [["kd", "kd"], ["kd", {"name": "kd", "temperature": 2}]])
def test_method_listed_twice_is_rejected(specs):
    with pytest.raises(ValueError, match="method 'kd' is listed twice"):
        normalize_method_specs(specs)


@pytest.mark.parametrize(
    "specs, message",
    [
        ([{"temperature": 4}], "expected a name or a mapping with a 'name' key"),
        ({"kd": 4}, "options of method 'kd' = 4 are invalid"),
        (42, "expected a mapping of method name to options"),
        (["nope"], "unknown method 'nope'"),
    ],
)
def test_invalid_specs(specs, message):
    with pytest.raises(ValueError, match=message):
        normalize_method_specs(specs)


def test_unknown_method_name_suggests_the_closest_registered_ones():
    with pytest.raises(MethodOptionsError, match=r"unknown method 'fma' \(did you mean fam\?\); registered methods: ce,"):
        get_method_class("fma")
    with pytest.raises(MethodOptionsError, match=r"unknown method 'figdk' \(did you mean figkd"):
        normalize_method_specs({"figdk": {}})


def test_unknown_method_name_far_from_every_method_gets_no_suggestion():
    with pytest.raises(MethodOptionsError) as error:
        get_method_class("transformer")
    assert "did you mean" not in str(error.value)


def test_every_builtin_method_has_its_own_one_line_description():
    descriptions = {name: method_description(cls) for name, cls in available_methods().items()}
    assert len(set(descriptions.values())) == len(descriptions), descriptions  # fam and fam_l2l differ
    for name, description in descriptions.items():
        assert description and "\n" not in description and len(description) <= 100, (name, description)


def test_description_of_a_custom_method_falls_back_to_its_class_docstring(clean_registry):
    cls = make_method_class()
    cls.__doc__ = "Scaled L1 between logits.\n\n    More detail."
    assert method_description(cls) == "Scaled L1 between logits."
    cls.description = "Its own line."
    assert method_description(cls) == "Its own line."

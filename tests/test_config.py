"""parse_config: YAML + key=value overrides -> validated DistillationConfig / ModelArguments / DataArguments."""

from __future__ import annotations

import pytest
import yaml

from hf_freqkd.config import DistillationConfig, parse_config
from hf_freqkd.methods.registry import build_methods


def write_yaml(tmp_path, values, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def base_config(tmp_path):
    return write_yaml(
        tmp_path,
        {
            "output_dir": str(tmp_path / "out"),
            "learning_rate": 0.1,
            "per_device_train_batch_size": 4,
            "methods": {"kd": {"temperature": 4}},
            "student_model": "test_resnet",
            "dataset": "digits",
        },
    )


def test_yaml_values_and_overrides(base_config, tmp_path):
    args, model_args, data_args = parse_config(base_config, ["learning_rate=1e-3", "methods.kd.temperature=2"])
    assert isinstance(args, DistillationConfig)
    # "1e-3" is a string to YAML; it must arrive as the float 0.001, not stay a string or the YAML 0.1.
    assert isinstance(args.learning_rate, float)
    assert args.learning_rate == pytest.approx(1e-3)
    assert args.methods == {"kd": {"temperature": 2}}
    assert args.per_device_train_batch_size == 4
    assert args.output_dir == str(tmp_path / "out")
    assert model_args.student_model == "test_resnet"
    assert data_args.dataset == "digits"


def test_number_written_as_string_in_yaml_is_coerced(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\nlearning_rate: 5e-4\nweight_decay: '0.25'\n")
    args, _, _ = parse_config(path)
    assert args.learning_rate == pytest.approx(5e-4)
    assert args.weight_decay == pytest.approx(0.25)


def test_nested_override_on_list_form_of_methods(tmp_path):
    path = write_yaml(tmp_path, {"output_dir": str(tmp_path / "out"), "methods": ["ce", "kd"]})
    args, _, _ = parse_config(path, ["methods.kd.temperature=2"])
    assert args.methods == {"ce": {}, "kd": {"temperature": 2}}


def test_override_without_equals_sign_is_rejected(base_config):
    with pytest.raises(ValueError, match="learning_rate0.1.*key=value"):
        parse_config(base_config, ["learning_rate0.1"])


def test_unknown_key_on_command_line_names_it_and_suggests(base_config):
    with pytest.raises(ValueError) as error:
        parse_config(base_config, ["learnig_rate=1e-3"])
    message = str(error.value)
    assert "'learnig_rate'" in message
    assert "did you mean learning_rate" in message


def test_unknown_key_in_yaml_file_is_rejected(tmp_path):
    path = write_yaml(tmp_path, {"output_dir": str(tmp_path / "out"), "teacher_modle": "test_resnet"})
    with pytest.raises(ValueError, match=r"'teacher_modle' \(did you mean teacher_model"):
        parse_config(path)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("per_device_train_batch_size", "abc", "expected an integer"),
        ("learning_rate", "fast", "expected a number"),
        ("teacher_pretrained", "maybe", "expected true or false"),
        ("num_classes", 2.5, "expected an integer"),
    ],
)
def test_wrong_type_names_key_and_value(tmp_path, key, value, expected):
    path = write_yaml(tmp_path, {"output_dir": str(tmp_path / "out"), key: value})
    with pytest.raises(ValueError) as error:
        parse_config(path)
    message = str(error.value)
    assert f"'{key}'" in message
    assert repr(value) in message
    assert expected in message


def test_yaml_that_does_not_parse_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("output_dir: out\nmethods: [kd, ce\nlearning_rate: : 1\n")
    with pytest.raises(ValueError, match="broken.yaml.*not valid YAML"):
        parse_config(path)


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- output_dir\n- learning_rate\n")
    with pytest.raises(ValueError, match="list.yaml.*mapping"):
        parse_config(path)


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        parse_config(tmp_path / "nowhere.yaml")


def test_missing_output_dir(tmp_path):
    path = write_yaml(tmp_path, {"learning_rate": 0.1})
    with pytest.raises(ValueError, match="output_dir is not set"):
        parse_config(path)


def test_output_dir_from_override_is_enough(tmp_path):
    args, _, _ = parse_config(None, [f"output_dir={tmp_path / 'o'}"])
    assert args.output_dir == str(tmp_path / "o")
    assert args.methods == {"kd": {}}


def test_unknown_method_lists_registered_methods(base_config):
    with pytest.raises(ValueError) as error:
        parse_config(base_config, ["methods.notamethod.weight=1"])
    message = str(error.value)
    assert "unknown method 'notamethod'" in message
    registered = message.split("registered methods:")[1]
    assert "ce" in registered and "kd" in registered


def test_unknown_method_option_lists_valid_options(base_config):
    with pytest.raises(ValueError) as error:
        parse_config(base_config, ["methods.kd.tempreature=2"])
    message = str(error.value)
    assert "'tempreature'" in message
    assert "valid options: temperature, weight" in message


def test_method_option_of_wrong_type(base_config):
    with pytest.raises(ValueError, match=r"method 'kd' option 'temperature' = 'hot'.*number"):
        parse_config(base_config, ["methods.kd.temperature=hot"])


@pytest.mark.parametrize(
    "override, option, value",
    [
        ("methods.kd.weight=-1", "weight", "-1.0"),
        ("methods.kd.temperature=0", "temperature", "0.0"),
        ("methods.kd.temperature=-2.5", "temperature", "-2.5"),
        ("methods.ce.label_smoothing=1", "label_smoothing", "1.0"),
    ],
)
def test_invalid_option_value_names_option_and_value(base_config, override, option, value):
    with pytest.raises(ValueError) as error:
        parse_config(base_config, [override])
    assert f"option '{option}' = {value} is invalid" in str(error.value)


def test_warmup_steps_and_epochs_are_exclusive(base_config):
    with pytest.raises(ValueError, match="not both"):
        parse_config(base_config, ["distill_warmup_steps=10", "distill_warmup_epochs=1"])


def test_ce_added_at_weight_one_when_not_listed():
    methods = build_methods({"kd": {"temperature": 3}})
    assert [method.name for method in methods] == ["ce", "kd"]
    assert methods[0].weight == 1.0
    assert methods[1].options.temperature == 3.0


def test_ce_not_added_when_listed():
    methods = build_methods({"kd": {}, "ce": {"weight": 0.1}})
    names = [method.name for method in methods]
    assert names.count("ce") == 1
    assert sorted(names) == ["ce", "kd"]
    ce = next(method for method in methods if method.name == "ce")
    assert ce.weight == pytest.approx(0.1)


def test_ce_not_added_when_asked():
    assert [method.name for method in build_methods({"kd": {}}, add_ce=False)] == ["kd"]

"""parse_config: YAML + key=value overrides -> validated DistillationConfig / ModelArguments / DataArguments."""

from __future__ import annotations

import pytest
import yaml

from hf_freqkd.config import DistillationConfig, parse_config
from hf_freqkd.errors import ConfigError, MethodOptionsError, MissingPathError
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


# ----------------------------------------------------------------------------------------------
# One coercion rule for top-level keys and method options; errors of the library's own types


def test_numbers_in_exponent_form_are_numbers_in_method_options_as_in_top_level_keys(tmp_path):
    # YAML (1.1) reads 1e1 and 4e0 as strings: both places must still see numbers.
    path = tmp_path / "c.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'out'}\nper_device_train_batch_size: 4e0\nlearning_rate: 1e-2\n"
        "methods: {kd: {temperature: 1e1, weight: 5e-1}, figkd: {levels: 2e0}}\n"
    )
    args, _, _ = parse_config(path)
    assert args.per_device_train_batch_size == 4 and isinstance(args.per_device_train_batch_size, int)
    assert args.learning_rate == pytest.approx(0.01)
    kd, figkd = build_methods(args.methods, add_ce=False)
    assert kd.options.temperature == 10.0 and kd.weight == 0.5
    assert figkd.options.levels == 2 and isinstance(figkd.options.levels, int)


def test_numbers_in_exponent_form_on_the_command_line(base_config):
    args, _, _ = parse_config(base_config, ["methods.kd.temperature=1e1", "per_device_train_batch_size=8e0"])
    assert build_methods(args.methods, add_ce=False)[0].options.temperature == 10.0
    assert args.per_device_train_batch_size == 8


@pytest.mark.parametrize(
    "override, error_type",
    [
        (["learnig_rate=1e-3"], ConfigError),
        (["per_device_train_batch_size=many"], ConfigError),
        (["methods.kd.temp=2"], MethodOptionsError),
        (["methods.kdd.weight=1"], MethodOptionsError),
        (["methods.kd.temperature=hot"], MethodOptionsError),
        (["learning_rate0.1"], ConfigError),
    ],
)
def test_bad_values_raise_the_librarys_bad_input_errors(base_config, override, error_type):
    with pytest.raises(error_type):
        parse_config(base_config, override)


def test_bbox_format_defaults_to_coco_and_takes_corners_for_detection(base_config):
    _, _, data_args = parse_config(base_config)
    assert data_args.bbox_format == "xywh"
    _, _, data_args = parse_config(base_config, ["task=detection", "bbox_format=xyxy"])
    assert data_args.bbox_format == "xyxy"


@pytest.mark.parametrize(
    "override, message",
    [
        (["task=detection", "bbox_format=cxcywh"], r"^bbox_format = 'cxcywh' is invalid: expected one of xywh, xyxy"),
        (["task=detection", "bbox_format=XYXY"], r"^bbox_format = 'XYXY' is invalid: expected one of xywh, xyxy"),
        (["bbox_format=xyxy"], r"^bbox_format = 'xyxy' applies to task: detection; set task: detection or remove it$"),
        (["task=segmentation", "bbox_format=xyxy"], r"^bbox_format = 'xyxy' applies to task: detection"),
        (["task=detection", "mask_column=annotation"], r"^mask_column and reduce_labels apply to task: segmentation"),
    ],
)
def test_data_options_of_another_task_or_unknown_bbox_format_are_refused(base_config, override, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(base_config, override)


def test_segmentation_names_its_mask_column_not_a_label_column(base_config):
    with pytest.raises(ConfigError, match=r"^label_column = 'annotation' is set with task: segmentation; name the mask column"):
        parse_config(base_config, ["task=segmentation", "label_column=annotation"])


@pytest.fixture
def instance_segmentation_task():
    """A user's task, registered by their script: masks and boxes, so it reads segmentation's and detection's
    data arguments, and one check of its own."""
    from hf_freqkd.tasks import base, register_task
    from hf_freqkd.tasks.segmentation import SegmentationTask

    @register_task
    class InstanceSegmentationTask(SegmentationTask):
        name = "instance_segmentation_test_only"
        data_arguments = ("mask_column", "reduce_labels", "bbox_format")

        def check_data_arguments(self, data_args):
            if data_args.bbox_format != "xyxy":
                raise ConfigError(f"{self.name} reads corner boxes: set bbox_format: xyxy")

    yield InstanceSegmentationTask
    base._TASKS.pop(InstanceSegmentationTask.name, None)


def test_a_users_task_takes_the_data_arguments_it_declares(base_config, instance_segmentation_task):
    name = instance_segmentation_task.name
    _, _, data_args = parse_config(base_config, [f"task={name}", "mask_column=annotation", "reduce_labels=true", "bbox_format=xyxy"])
    assert (data_args.task, data_args.mask_column, data_args.reduce_labels, data_args.bbox_format) == (name, "annotation", True, "xyxy")
    with pytest.raises(ConfigError, match=f"^{name} reads corner boxes"):
        parse_config(base_config, [f"task={name}", "mask_column=annotation"])
    # The built-in tasks still refuse each other's arguments, naming the built-in task they belong to.
    with pytest.raises(ConfigError, match=r"^bbox_format = 'xyxy' applies to task: detection; set task: detection or remove it$"):
        parse_config(base_config, ["task=segmentation", "bbox_format=xyxy"])
    with pytest.raises(ConfigError, match=r"^mask_column and reduce_labels apply to task: segmentation"):
        parse_config(base_config, ["task=detection", "mask_column=annotation"])


def test_a_task_declaring_a_field_data_arguments_lacks_is_a_programming_error(base_config):
    from hf_freqkd.tasks import base, register_task

    @register_task
    class DepthTask(base.Task):
        name = "depth_test_only_data"
        data_arguments = ("depth_column",)

    try:
        with pytest.raises(TypeError, match=r"task 'depth_test_only_data' declares data_arguments \['depth_column'\]"):
            parse_config(base_config, ["task=depth_test_only_data"])
    finally:
        base._TASKS.pop("depth_test_only_data", None)


def test_missing_config_file_is_a_missing_path_error(tmp_path):
    with pytest.raises(MissingPathError):
        parse_config(tmp_path / "nowhere.yaml")


def test_training_arguments_own_checks_are_config_errors_in_one_line(base_config):
    # TrainingArguments raises a plain ValueError for this; it is the user's config, so bad input.
    with pytest.raises(ConfigError, match="load_best_model_at_end requires the saving steps") as error:
        parse_config(
            base_config,
            ["eval_strategy=steps", "save_strategy=steps", "eval_steps=3", "save_steps=5", "load_best_model_at_end=true"],
        )
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------------------------
# bf16 without an accelerator: trained on the CPU in bf16 (use_cpu), as transformers supports


def _pretend_accelerator(monkeypatch, present: bool, supports_bf16: bool) -> None:
    import torch
    import transformers.training_args
    import transformers.utils

    for module in (transformers.utils, transformers.training_args):
        monkeypatch.setattr(module, "is_torch_bf16_gpu_available", lambda: supports_bf16)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: present)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cuda") if present else None)


def test_bf16_without_an_accelerator_trains_on_the_cpu(tmp_path, monkeypatch):
    _pretend_accelerator(monkeypatch, present=False, supports_bf16=False)
    args = DistillationConfig(output_dir=str(tmp_path), bf16=True, report_to="none")
    assert args.use_cpu and args.bf16
    assert args.device.type == "cpu"


def test_bf16_on_an_accelerator_without_bf16_names_the_ways_out(tmp_path, monkeypatch):
    _pretend_accelerator(monkeypatch, present=True, supports_bf16=False)
    with pytest.raises(ConfigError, match="does not support bf16: set fp16=true .* or use_cpu=true"):
        DistillationConfig(output_dir=str(tmp_path), bf16=True, report_to="none")


def test_bf16_with_use_cpu_is_left_alone(tmp_path, monkeypatch):
    _pretend_accelerator(monkeypatch, present=True, supports_bf16=False)
    args = DistillationConfig(output_dir=str(tmp_path), bf16=True, use_cpu=True, report_to="none")
    assert args.use_cpu and args.bf16


@pytest.mark.parametrize(
    "text, expected",
    [
        ("methods: [ce, kd]", {"ce": {}, "kd": {}}),
        ("methods: 'ce, kd'", {"ce": {}, "kd": {}}),
        ("lr_decay_epochs: 150", [150.0]),
        ("lr_decay_epochs: [1.5e2, 18e1]", [150.0, 180.0]),
    ],
)
def test_keys_parsed_by_their_dataclass_keep_every_form(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\n{text}\n")
    args, _, _ = parse_config(path)
    key = text.split(":")[0]
    assert getattr(args, key) == expected


# DataLoader defaults (hf_freqkd.config.DistillationConfig._dataloader_defaults)


def test_dataloader_on_the_cpu_is_single_process_without_pinned_memory(tmp_path, monkeypatch):
    import warnings

    import torch

    _pretend_accelerator(monkeypatch, present=False, supports_bf16=False)
    args = DistillationConfig(output_dir=str(tmp_path), report_to="none")
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers, args.dataloader_pin_memory) == (0, False, False)
    # The Trainer passes pin_memory on to every epoch's DataLoader, which warned at each one before.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(torch.utils.data.DataLoader(range(4), batch_size=2, pin_memory=args.dataloader_pin_memory))


def test_dataloader_with_an_accelerator_has_persistent_workers_and_pinned_memory(tmp_path, monkeypatch):
    import os

    _pretend_accelerator(monkeypatch, present=True, supports_bf16=True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    args = DistillationConfig(output_dir=str(tmp_path), report_to="none")
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers, args.dataloader_pin_memory) == (4, True, True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four training processes share the 8 CPUs
    assert DistillationConfig(output_dir=str(tmp_path), report_to="none").dataloader_num_workers == 1
    on_cpu = DistillationConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert (on_cpu.dataloader_num_workers, on_cpu.dataloader_persistent_workers, on_cpu.dataloader_pin_memory) == (0, False, False)


def test_dataloader_settings_the_user_gives_are_kept(tmp_path, monkeypatch):
    _pretend_accelerator(monkeypatch, present=False, supports_bf16=False)
    args, _, _ = parse_config(None, [f"output_dir={tmp_path}", "dataloader_num_workers=3"])
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (3, True)
    args, _, _ = parse_config(None, [f"output_dir={tmp_path}", "dataloader_num_workers=3", "dataloader_persistent_workers=false"])
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (3, False)
    with pytest.raises(ConfigError, match=r"^dataloader_num_workers = -2 is invalid: expected an integer >= 0$"):
        parse_config(None, [f"output_dir={tmp_path}", "dataloader_num_workers=-2"])

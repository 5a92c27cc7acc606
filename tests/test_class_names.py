"""Class names: read from the data, given in a config, checked against the teacher, written to the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
from transformers import ViTConfig, ViTForImageClassification

import hf_freqkd  # noqa: F401  registers the CIFAR zoo in timm
from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.class_names import check_class_names, model_class_names
from hf_freqkd.cli import main
from hf_freqkd.data import load_digits_dataset, with_image_transform
from hf_freqkd.errors import ConfigError, ModelError
from hf_freqkd.export import export_student

from .helpers import tiny_run_config, write_run_config

INPUT_8 = {"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
DIGITS = [str(digit) for digit in range(10)]  # the ClassLabel names of the bundled digits


@pytest.fixture(scope="module")
def digits_train():
    rows = load_digits_dataset()["train"].select(range(16))
    return with_image_transform(rows, "image", "label", INPUT_8, training=False, augmentation="none")


def args_for(tmp_path: Path, **overrides) -> DistillationConfig:
    values = dict(output_dir=str(tmp_path / "run"), methods={"ce": {}, "kd": {}}, max_steps=1, per_device_train_batch_size=8,
                  report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no")
    return DistillationConfig(**{**values, **overrides})


def teacher_naming(tmp_path: Path, names: list[str]) -> str:
    """A resnet14 teacher exported with ``names``, as a previous run leaves it."""
    record = {"config": {"student_model": "resnet14", "dataset": "digits"}, "metrics": {}, "class_names": names}
    return str(export_student(timm.create_model("resnet14", num_classes=len(names)), tmp_path / "teacher", record))


@pytest.mark.parametrize(
    "names, message",
    [
        ("cat", "expected a list of 3 class names"),
        (["cat", "dog"], "names 2 classes but the model predicts 3"),
        (["cat", "dog", "cat"], "names cat more than once"),
        (["cat", "", "fox"], "expected a non-empty string for every class"),
        (["cat", 7, "fox"], "expected a non-empty string for every class"),
    ],
)
def test_bad_class_names_are_refused_naming_the_problem(names, message):
    with pytest.raises(ConfigError, match=message):
        check_class_names(names, 3, "class_names")


def test_a_model_names_its_classes_unless_they_are_transformers_defaults():
    vit = ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8, num_labels=2))
    assert model_class_names(vit) is None  # LABEL_0, LABEL_1
    vit.config.id2label = {0: "cat", 1: "dog"}
    assert model_class_names(vit) == ["cat", "dog"]
    resnet = timm.create_model("resnet8", num_classes=2)
    assert model_class_names(resnet) is None
    resnet.pretrained_cfg["label_names"] = ["cat", "dog"]
    assert model_class_names(resnet) == ["cat", "dog"]


def test_the_trainer_reads_the_names_of_the_datasets_class_label(tmp_path, digits_train):
    trainer = DistillationTrainer(model=timm.create_model("resnet8", num_classes=10), teacher=teacher_naming(tmp_path, DIGITS),
                                  args=args_for(tmp_path), train_dataset=digits_train)
    assert trainer.class_names == DIGITS and trainer.run_record["class_names"] == DIGITS
    trainer.train()
    config = json.loads((tmp_path / "run" / "student" / "config.json").read_text())
    assert config["label_names"] == DIGITS and config["id2label"]["7"] == "7"


def test_given_names_replace_the_datas_and_reach_a_transformers_export(tmp_path, digits_train):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    vit = ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8, num_labels=10))
    trainer = DistillationTrainer(model=vit, args=args_for(tmp_path, methods={"ce": {}}), train_dataset=digits_train, class_names=names)
    trainer.train()
    config = json.loads((tmp_path / "run" / "student" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(names)} and config["label2id"]["three"] == 3


def test_a_teacher_naming_the_classes_in_another_order_is_refused_before_training(tmp_path, digits_train):
    teacher = teacher_naming(tmp_path, DIGITS[::-1])
    with pytest.raises(ModelError, match="another order \\(its class 0 is '9', the data's is '0'\\)"):
        DistillationTrainer(model=timm.create_model("resnet8", num_classes=10), teacher=teacher, args=args_for(tmp_path), train_dataset=digits_train)
    assert not (tmp_path / "run").exists()


def test_a_teacher_of_other_classes_is_refused_naming_them(tmp_path, digits_train):
    teacher = teacher_naming(tmp_path, [*DIGITS[:9], "ten"])
    with pytest.raises(ModelError, match="the teacher's 'ten' are not among the data's; the data's '9' are not among the teacher's"):
        DistillationTrainer(model=timm.create_model("resnet8", num_classes=10), teacher=teacher, args=args_for(tmp_path), train_dataset=digits_train)


def test_class_names_in_a_config_reach_the_export_and_a_wrong_count_writes_nothing(tmp_path, capsys):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    config = write_run_config(tmp_path / "good.yaml", tiny_run_config(tmp_path / "good", class_names=names))
    assert main(["train-teacher", "--config", str(config)]) == 0
    assert json.loads((tmp_path / "good" / "student" / "config.json").read_text())["label_names"] == names
    assert "`3` three" in (tmp_path / "good" / "student" / "README.md").read_text()

    config = write_run_config(tmp_path / "bad.yaml", tiny_run_config(tmp_path / "bad", class_names=names[:9]))
    assert main(["train-teacher", "--config", str(config)]) == 2
    assert "class_names names 9 classes but the model predicts 10" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_the_generated_segmentation_set_names_its_classes(tmp_path):
    from hf_freqkd.data.loading import generated_class_names

    assert generated_class_names("shapes_segmentation", "num_classes=3") == ["background", "circle", "square"]
    assert generated_class_names("digits") is None  # its ClassLabel names them


def test_the_detection_sets_category_names_are_read():
    from hf_freqkd.data import load_image_dataset
    from hf_freqkd.data.shapes_detection import SHAPE_KINDS
    from hf_freqkd.tasks import get_task

    data = load_image_dataset("shapes_detection", "num_train=4,num_test=2,num_classes=2")
    assert get_task("detection").class_names(data["train"]) == list(SHAPE_KINDS[:2])
    assert get_task("segmentation").class_names(data["train"]) is None  # masks carry no names

"""The task registry and the checks every task shares."""

import pytest
import timm
import torch

import hf_freqkd  # noqa: F401  registers the model zoo
from hf_freqkd.errors import ConfigError, DataError, MethodOptionsError, ModelError
from hf_freqkd.methods import build_methods
from hf_freqkd.tasks import Task, available_tasks, get_task, register_task, task_for_model


def test_registered_tasks_are_classification_segmentation_and_detection():
    assert set(available_tasks()) == {"classification", "segmentation", "detection"}


def test_unknown_task_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"did you mean 'segmentation'"):
        get_task("segmentaton")


def test_model_decides_the_task():
    assert task_for_model(timm.create_model("resnet8", num_classes=3)).name == "classification"
    assert task_for_model(timm.create_model("segfpn_resnet18", num_classes=3)).name == "segmentation"
    assert task_for_model(timm.create_model("retinanet_resnet8", num_classes=3)).name == "detection"


def test_teacher_of_another_task_is_refused():
    student = timm.create_model("resnet8", num_classes=3)
    teacher = timm.create_model("segfpn_resnet18", num_classes=3)
    with pytest.raises(ModelError, match="the teacher FPNSegmenter is a segmentation network"):
        task_for_model(student).check_models(student, teacher)


def test_methods_that_do_not_apply_are_named_with_the_ones_that_do():
    with pytest.raises(MethodOptionsError, match=r"kd do not apply to segmentation.*methods that do: ce, feature_mse, freekd"):
        get_task("segmentation").check_methods(build_methods({"ce": {}, "kd": {}}))
    get_task("classification").check_methods(build_methods({"ce": {}, "kd": {}}))


def test_rows_with_the_wrong_label_layout_are_refused():
    rows = [{"pixel_values": torch.zeros(3, 8, 8), "labels": torch.zeros(8, 8, dtype=torch.long)}]
    with pytest.raises(DataError, match="training rows hold a \\(H, W\\) mask"):
        get_task("classification").check_training_rows(rows)
    get_task("segmentation").check_training_rows(rows)
    with pytest.raises(DataError, match="hold a class id"):
        get_task("segmentation").check_training_rows([{"pixel_values": torch.zeros(3, 8, 8), "labels": 1}])


def test_a_new_task_is_one_subclass_and_one_registration():
    class DepthTask(Task):
        name = "depth_test_only"
        pipeline_tag = "depth-estimation"
        model_kind = "a depth network"
        card_title = "Depth network"
        label_dims = 2
        label_hint = "-"

        def matches(self, model):
            return getattr(model, "predicts_depth", False)

    try:
        register_task(DepthTask)
        model = timm.create_model("resnet8", num_classes=1)
        model.predicts_depth = True
        assert task_for_model(model).name == "depth_test_only"
        assert get_task("depth_test_only").pipeline_tag == "depth-estimation"
    finally:
        from hf_freqkd.tasks import base

        base._TASKS.pop("depth_test_only", None)

"""The segmentation path end to end through ``hf_freqkd.run``: train a segfpn teacher, fit FreeKD's
prompts with its per-pixel loss, distil a student, evaluate mIoU, export; and the early errors."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import load_file

import hf_freqkd  # noqa: F401  registers the segfpn networks
from hf_freqkd.layers.frequency_prompts import load_prompts
from hf_freqkd.prompt_fitting import run_fit_prompts
from hf_freqkd.run import prepare_run, run

COMMON = {
    "task": "segmentation",
    "dataset": "shapes_segmentation",
    "dataset_config_name": "num_train=32,num_test=8,image_size=32,num_classes=4",
    "image_size": 32,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 8,
    "learning_rate": 0.02,
    "report_to": "none",
    "use_cpu": True,
    "dataloader_num_workers": 0,
    "save_strategy": "no",
    "eval_strategy": "no",
    "disable_tqdm": True,
    "logging_steps": 1,
}


def test_teacher_prompts_and_freekd_distillation_on_shapes(tmp_path):
    teacher = run("teacher", defaults={**COMMON, "student_model": "segfpn_resnet8", "max_steps": 3, "output_dir": str(tmp_path / "t")})
    assert set(teacher.metrics) >= {"eval_loss", "eval_mean_iou", "eval_pixel_accuracy", "eval_mean_accuracy"}
    assert 0 <= teacher.metrics["eval_mean_iou"] <= 1 and 0 <= teacher.metrics["eval_pixel_accuracy"] <= 1

    prompts_path = tmp_path / "prompts.safetensors"
    methods = {"ce": {}, "freekd": {"prompts_path": str(prompts_path), "prompt_steps": 3, "prompt_report_batches": 1}}
    distill = {**COMMON, "student_model": "segfpn_resnet8", "teacher_model": teacher.export_dir, "methods": methods, "output_dir": str(tmp_path / "s")}
    # Stage 1 with the teacher's per-pixel cross-entropy as task loss.
    fitted = run_fit_prompts(None, [f"{key}={value}" for key, value in distill.items()])
    assert fitted.shapes == {"backbone.layer3": (4, 2, 64)}
    assert math.isfinite(fitted.task_loss_with_prompts) and math.isfinite(fitted.task_loss_without_prompts)
    assert load_prompts(str(prompts_path)).layers == ["backbone.layer3"]

    student = run("distill", defaults={**distill, "max_steps": 2})
    assert all(math.isfinite(student.metrics[key]) for key in ("eval_loss", "eval_mean_iou", "eval_pixel_accuracy"))
    assert student.method_parameters == 64 * 64 + 64  # the 1x1 adapter of layer3; prompts are frozen buffers
    # The export is the segmentation network alone and reloads by name.
    state = load_file(f"{student.export_dir}/model.safetensors")
    assert not any(key.startswith(("methods.", "teacher", "prompts")) for key in state)
    exported = timm.create_model(f"local-dir:{student.export_dir}", pretrained=True).eval()
    assert exported(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def test_a_mask_value_outside_the_classes_fails_before_training(tmp_path):
    # The masks hold classes 0..3; a 3-class model cannot take class 3.
    with pytest.raises(ValueError, match=r"train split: mask column 'annotation' holds values \[3\] that are neither class ids of the model's 3 classes \(0..2\) nor the ignore_index 255"):
        prepare_run("teacher", defaults={**COMMON, "student_model": "segfpn_resnet8", "num_classes": 3, "max_steps": 1, "output_dir": str(tmp_path / "r")})
    # Without the ignore index the shapes' outlines (255) are out-of-range labels too.
    with pytest.raises(ValueError, match=r"holds values \[255\] that are neither class ids of the model's 4 classes"):
        prepare_run("teacher", defaults={**COMMON, "student_model": "segfpn_resnet8", "ignore_index": 0, "num_classes": 4, "max_steps": 1, "output_dir": str(tmp_path / "r")})


def test_logit_methods_and_mismatched_tasks_are_refused(tmp_path):
    base = {**COMMON, "max_steps": 1, "output_dir": str(tmp_path / "r")}
    with pytest.raises(ValueError, match=r"method\(s\) kd do not apply to segmentation .* methods that do: ce, .*freekd"):
        prepare_run("distill", defaults={**base, "student_model": "segfpn_resnet8", "teacher_model": "segfpn_resnet20", "methods": {"ce": {}, "kd": {}}})
    with pytest.raises(ValueError, match=r"task 'segmentation' needs a segmentation network .* but the student CifarResNet is an image classifier: use a student for segmentation \(e.g. segfpn_resnet18"):
        prepare_run("teacher", defaults={**base, "student_model": "resnet8"})
    with pytest.raises(ValueError, match="the student FPNSegmenter is a segmentation network .* but the teacher CifarResNet is an image classifier"):
        prepare_run("distill", defaults={**base, "student_model": "segfpn_resnet8", "teacher_model": "resnet20", "methods": {"ce": {}, "freekd": {"masks": "uniform"}}})
    with pytest.raises(ValueError, match="label_column = 'annotation' is set with task: segmentation; name the mask column with mask_column"):
        prepare_run("teacher", defaults={**base, "student_model": "segfpn_resnet8", "label_column": "annotation"})

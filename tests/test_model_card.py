"""The model card: metadata huggingface_hub parses back, and a body stating teacher, methods and recipe."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from hf_freqkd import DistillationConfig
from hf_freqkd.model_card import build_model_card, hub_model_id, training_recipe, write_model_card

RECORD = {
    "mode": "distill",
    "config": {
        "student_model": "resnet8",
        "teacher_model": "hf-hub:timm/resnet18.a1_in1k",
        "methods": {"ce": {"weight": 0.1}, "figkd": {"weight": 0.9}},
        "dataset": "uoft-cs/cifar100",
        "dataset_config_name": None,
        "eval_split": "test",
        "image_size": 32,
    },
    "training": {"epochs": 240.0, "learning_rate": 0.05, "total_batch_size": 64, "optimizer": "sgd", "seed": 7},
    "metrics": {"eval_loss": 1.2, "eval_accuracy": 0.7312, "eval_top5_accuracy": 0.9251, "eval_runtime": 3.2},
}


def test_eval_results_are_parsed_back_by_huggingface_hub(tmp_path):
    path = write_model_card(tmp_path, RECORD, "timm", model_name="resnet8-figkd-cifar100")
    card = ModelCard.load(path)
    results = {(r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert results == {("accuracy", 0.7312), ("top_5_accuracy", 0.9251)}
    first = card.data.eval_results[0]
    assert (first.task_type, first.dataset_type, first.dataset_split) == (
        "image-classification",
        "uoft-cs/cifar100",
        "test",
    )
    assert card.data.model_name == "resnet8-figkd-cifar100"


def test_metadata_names_library_tags_teacher_and_dataset(tmp_path):
    card = ModelCard.load(write_model_card(tmp_path, RECORD, "timm"))
    assert card.data.library_name == "timm"
    assert card.data.pipeline_tag == "image-classification"
    assert {"knowledge-distillation", "hf_freqkd", "figkd", "timm"} <= set(card.data.tags)
    assert "ce" not in card.data.tags
    assert card.data.base_model == "timm/resnet18.a1_in1k"
    assert card.data.datasets == ["uoft-cs/cifar100"]


def test_body_states_teacher_methods_with_defaults_and_recipe():
    text = build_model_card(RECORD, "transformers").content
    assert "distilled with figkd from the teacher [`timm/resnet18.a1_in1k`](https://huggingface.co/timm/resnet18.a1_in1k)" in text
    assert "AutoModelForImageClassification.from_pretrained" in text
    # Every option, defaults filled in, not only what the config spelled out.
    figkd_block = text.split("figkd:")[1]
    assert "weight: 0.9" in figkd_block and "temperature:" in figkd_block
    for row in (
        "| epochs | 240.0 |",
        "| learning_rate | 0.05 |",
        "| total_batch_size | 64 |",
        "| optimizer | sgd |",
        "| seed | 7 |",
    ):
        assert row in text
    assert "| eval_accuracy | 0.7312 |" in text and "eval_runtime" not in text


def test_local_teacher_and_bundled_dataset_are_not_hub_metadata():
    record = {**RECORD, "config": {**RECORD["config"], "teacher_model": "runs/teacher/student", "dataset": "digits"}}
    card = build_model_card(record, "timm")
    assert card.data.base_model is None and card.data.datasets is None
    assert card.data.eval_results[0].dataset_type == "digits"


def test_teacher_run_card_without_metrics():
    record = {
        "mode": "teacher",
        "config": {"student_model": "resnet20", "methods": {"ce": {}}, "dataset": "digits"},
        "metrics": {},
    }
    card = build_model_card(record, "timm")
    assert "knowledge-distillation" not in card.data.tags
    assert not card.data.eval_results and card.data.base_model is None
    assert "trained alone, with cross-entropy on the labels and no teacher" in card.content


@pytest.mark.parametrize(
    "source, expected",
    [
        ("hf-hub:timm/resnet18.a1_in1k", "timm/resnet18.a1_in1k"),
        ("timm:hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", "timm/vit_tiny_patch16_224.augreg_in21k"),
        ("facebook/deit-tiny-patch16-224", "facebook/deit-tiny-patch16-224"),
        ("transformers:microsoft/resnet-18", "microsoft/resnet-18"),
        ("resnet32x4", None),
        ("./runs/teacher", None),
        ("/abs/runs/teacher/student", None),
        (None, None),
    ],
)
def test_hub_model_id(source, expected):
    assert hub_model_id(source) == expected


def test_training_recipe_is_a_whitelist_without_secrets(tmp_path):
    args = DistillationConfig(
        output_dir=str(tmp_path),
        methods={"kd": {}},
        learning_rate=0.05,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        lr_decay_epochs=[150, 180],
        seed=3,
        use_cpu=True,
        report_to="none",
    )
    recipe = training_recipe(args)
    assert recipe["total_batch_size"] == 16 and recipe["seed"] == 3 and recipe["learning_rate"] == 0.05
    assert recipe["lr_scheduler"] == "step decay at epochs 150, 180 (x0.1)"
    assert not any("token" in key for key in recipe)


def test_unknown_library_is_refused():
    with pytest.raises(ValueError, match="library_name = 'keras' is invalid"):
        build_model_card(RECORD, "keras")


def test_segmentation_card_has_the_segmentation_task_and_miou():
    from hf_freqkd.model_card import build_model_card

    record = {
        "mode": "distill",
        "config": {"student_model": "segfpn_resnet8", "teacher_model": "runs/t/student", "dataset": "shapes_segmentation",
                   "task": "segmentation", "methods": {"ce": {}}},
        "metrics": {"eval_mean_iou": 0.61234, "eval_pixel_accuracy": 0.9},
    }
    card = build_model_card(record, "timm")
    assert card.data.pipeline_tag == "image-segmentation"
    results = {r.metric_type: (r.task_type, r.metric_value) for r in card.data.eval_results}
    assert results["mean_iou"] == ("image-segmentation", 0.6123) and "pixel_accuracy" in results
    assert "Segmentation network `segfpn_resnet8`" in card.text


@pytest.mark.parametrize("dataset", ["digits", "shapes_segmentation", "fine_grained_synthetic"])
def test_generated_sets_are_never_hub_dataset_ids(dataset):
    record = {**RECORD, "config": {**RECORD["config"], "dataset": dataset, "dataset_config_name": "classes=16"}}
    card = build_model_card(record, "timm")
    assert card.data.datasets is None
    # The body says what the set is and how to make it again.
    assert f'generates offline, not a Hub dataset: `hf_freqkd.data.load_image_dataset("{dataset}", "classes=16")`' in card.text


def test_a_card_holds_no_local_path(tmp_path):
    import json

    teacher = tmp_path / "runs" / "teacher" / "student"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text(json.dumps({"architecture": "resnet20", "num_classes": 10}))
    images = tmp_path / "data" / "my_images"
    images.mkdir(parents=True)
    config = {
        **RECORD["config"],
        "teacher_model": str(teacher),
        "teacher_checkpoint": str(tmp_path / "ckpt" / "teacher.safetensors"),
        "student_model": str(tmp_path / "gone" / "student"),  # a folder since moved: no architecture to read
        "dataset": str(images),
        "output_dir": str(tmp_path / "runs" / "kd"),
    }
    card = build_model_card({**RECORD, "config": config}, "timm")
    text = str(card)
    assert str(tmp_path) not in text and "/tmp" not in text
    assert "distilled with figkd from a local teacher of architecture `resnet20` (not published) on `my_images`" in text
    assert "- Teacher: `resnet20` (a local model) (weights: `teacher.safetensors`)" in text
    assert "- Student: a local model" in text and "- Dataset: `my_images`: a local image folder" in text
    assert card.data.base_model is None and card.data.datasets is None
    assert card.data.eval_results[0].dataset_name == "my_images"


def test_a_local_transformers_teacher_is_named_by_its_architecture(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTForImageClassification"]}))
    record = {**RECORD, "config": {**RECORD["config"], "teacher_model": f"transformers:{tmp_path}"}}
    assert "from a local teacher of architecture `ViTForImageClassification` (not published)" in build_model_card(record, "transformers").text


def test_the_card_asks_the_run_task_for_tag_title_and_metrics():
    from hf_freqkd.tasks import Task, base, register_task

    class DepthTask(Task):
        name = "depth_card_test"
        pipeline_tag = "depth-estimation"
        model_kind = "a depth network"
        card_title = "Depth network"
        card_metrics = {"abs_rel": ("abs_rel", "Absolute relative error")}
        label_dims = 2
        label_hint = "-"

    register_task(DepthTask)
    try:
        record = {**RECORD, "config": {**RECORD["config"], "task": "depth_card_test"}, "metrics": {"eval_abs_rel": 0.12}}
        card = build_model_card(record, "timm")
    finally:
        base._TASKS.pop("depth_card_test", None)
    assert card.data.pipeline_tag == "depth-estimation" and "depth-estimation" in card.data.tags
    assert [(r.task_type, r.metric_type, r.metric_value) for r in card.data.eval_results] == [("depth-estimation", "abs_rel", 0.12)]
    assert "Depth network `resnet8` distilled" in card.text
    # No transformers auto class for this task: the timm card offers timm alone.
    assert "AutoModelForImageClassification" not in card.text


def test_a_timm_classifier_card_shows_both_loaders():
    text = build_model_card(RECORD, "timm").text
    assert 'timm.create_model("hf-hub:<repo id>", pretrained=True)' in text
    assert 'AutoModelForImageClassification.from_pretrained("<repo id or path>", trust_remote_code=True)' in text


@pytest.mark.parametrize(
    "student, import_line",
    [
        ("resnet8", "import hf_freqkd  # registers resnet8 in timm"),  # the CIFAR zoo
        ("fcos_resnet18", "import hf_freqkd  # registers fcos_resnet18 in timm"),
        ("resnet18", None),  # timm's own architecture: timm alone loads it
        ("hf-hub:me/unknown", "import hf_freqkd  # only needed for the architectures it registers"),
    ],
)
def test_the_usage_snippet_imports_hf_freqkd_when_it_registers_the_architecture(student, import_line):
    text = build_model_card({**RECORD, "config": {**RECORD["config"], "student_model": student}}, "timm").text
    snippet = text.split("## How to use")[1].split("## Training")[0].split("```python\nimport timm")[1]
    if import_line is None:
        assert "hf_freqkd" not in snippet
    else:
        assert import_line in snippet


def test_a_distilled_detector_card_skips_undefined_ap_and_names_its_methods():
    record = {
        "mode": "distill",
        "config": {"student_model": "retinanet_resnet8", "teacher_model": "retinanet_resnet20", "dataset": "shapes_detection",
                   "task": "detection", "methods": {"ce": {}, "freekd": {}}},
        "metrics": {"eval_loss": 1.5, "eval_map": 0.41234, "eval_map_50": 0.7, "eval_map_large": -1.0, "eval_mar_100": -1.0},
    }
    card = build_model_card(record, "timm")
    assert card.data.pipeline_tag == "object-detection"
    assert {"knowledge-distillation", "freekd", "object-detection"} <= set(card.data.tags)
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("map", 0.4123), ("map_50", 0.7)]
    assert "Object detector `retinanet_resnet8` distilled with freekd from the teacher `retinanet_resnet20`" in card.text
    assert "| eval_map_large | undefined |" in card.text and "| eval_mar_100 | undefined |" in card.text
    table = card.text.split("## Evaluation")[1].split("undefined:")[0]
    assert "| eval_loss | 1.5 |" in table and "-1" not in table and "-1" not in card.data.to_yaml()
    assert "`ce` is the ground-truth term: its own detection losses" in card.text


# -- what the card says happened, case by case -------------------------------------------------

_BASE = {"student_model": "resnet8", "dataset": "digits", "methods": {"ce": {}}, "image_size": 16}
CARD_CASES = {
    # case: (record, sentences the card must hold, phrases it must not)
    "alone": (
        {"mode": "distill", "config": _BASE},  # hf-freqkd distill with ce alone: the student-alone row
        ["Image classifier `resnet8` trained alone, with cross-entropy on the labels and no teacher, on `digits`.",
         "- Teacher: none (trained alone)"],
        ["distilled", "the teacher", "an unnamed model", "knowledge-distillation", "train-teacher", "resumed"],
    ),
    "teacher run": (
        {"mode": "teacher", "config": _BASE},
        ["trained alone, with cross-entropy on the labels and no teacher, on `digits` (an hf_freqkd `train-teacher` run: a teacher for distillation)."],
        ["distilled"],
    ),
    "distilled from the Hub": (
        {"mode": "distill", "config": {**_BASE, "teacher_model": "hf-hub:me/resnet20-digits", "methods": {"ce": {}, "kd": {}}}},
        ["Image classifier `resnet8` distilled with kd from the teacher [`me/resnet20-digits`](https://huggingface.co/me/resnet20-digits) on `digits`"],
        ["trained alone", "local teacher", "cache"],
    ),
    "distilled from a local teacher": (
        {"mode": "distill", "config": {**_BASE, "teacher_model": "./runs/teacher/student", "methods": {"ce": {}, "kd": {}}}},
        ["distilled with kd from a local teacher (not published) on `digits`", "- Teacher: a local model\n"],
        ["huggingface.co", "runs/teacher"],
    ),
    "cache-read teacher": (
        {"mode": "distill", "config": {**_BASE, "teacher_model": "resnet20", "teacher_cache": "runs/cache", "methods": {"ce": {}, "kd": {}}}},
        ["distilled with kd from the teacher `resnet20` on `digits`",
         "The teacher's outputs were read from a cache built before training",
         "- Teacher outputs: read from a teacher cache (`teacher_cache`), exact"],
        ["runs/cache"],
    ),
    "resumed": (
        {"mode": "distill", "resumed_from": "checkpoint-40", "config": {**_BASE, "teacher_model": "resnet20", "methods": {"ce": {}, "kd": {}}}},
        ["Training was interrupted and resumed from `checkpoint-40`"],
        ["These weights are the Trainer checkpoint"],
    ),
    "from a checkpoint": (
        {"mode": "distill", "checkpoint": "checkpoint-8", "config": {**_BASE, "teacher_model": "resnet20", "methods": {"ce": {}, "kd": {}}}},
        ["These weights are the Trainer checkpoint `checkpoint-8`, exported after the run"],
        ["resumed"],
    ),
    "segmentation": (
        {"mode": "distill", "class_names": ["background", "circle"],
         "config": {**_BASE, "student_model": "segfpn_resnet8", "task": "segmentation", "dataset": "shapes_segmentation",
                    "teacher_model": "segfpn_resnet20", "methods": {"ce": {}, "freekd": {}}}},
        ["Segmentation network `segfpn_resnet8` distilled with freekd from the teacher `segfpn_resnet20`",
         'pipeline("image-segmentation", model="<repo id or path>", trust_remote_code=True)',
         "AutoModelForSemanticSegmentation", "2 classes, by class id: `0` background, `1` circle"],
        ["AutoModelForImageClassification", "image-classification"],
    ),
    "detection alone": (
        {"mode": "teacher", "config": {**_BASE, "student_model": "fcos_resnet8", "task": "detection", "dataset": "shapes_detection"}},
        ["Object detector `fcos_resnet8` trained alone, with its own detection losses on the labels and no teacher",
         'pipeline("object-detection", model="<repo id or path>", trust_remote_code=True)'],
        ["distilled", "AutoModelForImageClassification"],
    ),
}


@pytest.mark.parametrize("case", list(CARD_CASES))
def test_every_sentence_of_the_card_fits_what_happened(case):
    record, present, absent = CARD_CASES[case]
    text = build_model_card({"metrics": {}, **record}, "timm").text
    for sentence in present:
        assert sentence in text, f"{case}: missing {sentence!r}"
    for phrase in absent:
        assert phrase not in text, f"{case}: should not say {phrase!r}"

"""A catalogue of bad inputs, each run through the ``hf-freqkd`` command.

Every case must: exit with the documented code (2 for bad input, 1 for a run that started and
failed; see hf_freqkd/errors.py), print ONE error line that names the bad value and says what to do,
fail before training where that can be known then, and leave the files already in ``output_dir``
exactly as they were (contents and modification times).

A case is ``(name, setup, fragments)``: ``setup(assets, tmp_path)`` returns the config tweak (a dict
merged into a tiny digits run, plus optional ``"argv"`` - extra command-line arguments - and
``"command"``, and ``"exit_code"`` when it is not 2); every fragment must appear in the error line.
Detection inputs (bad boxes, mismatched detectors) have their own catalogue on a tiny detection run,
each case also raising its error class from ``prepare_run`` and leaving no output folder behind.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_freqkd  # noqa: F401  registers the CIFAR zoo
from hf_freqkd.cli import main
from hf_freqkd.errors import DataError, MethodOptionsError, ModelError
from hf_freqkd.methods import DistillationMethod, MethodOptions, register_method
from hf_freqkd.methods.registry import _METHODS

from .helpers import tiny_run_config, write_run_config

KD = {"teacher_model": "resnet8", "methods": {"kd": {}}}


# ----------------------------------------------------------------------------------------------
# Assets shared by the cases: broken teachers, checkpoints, image folders, prompts


def _save_timm_folder(model, path: Path) -> str:
    from timm.models import save_for_hf

    save_for_hf(model, str(path), safe_serialization=True)
    return str(path)


def _image_folder(root: Path, broken: dict[str, bytes] | None = None, per_class: int = 4) -> str:
    """imagefolder layout ``root/train/<class>/<n>.png``; ``broken`` maps extra file names to raw bytes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    for name, data in (broken or {}).items():
        (root / "train" / name).write_bytes(data)
    return str(root)


def _truncated(fmt: str) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format=fmt)
    data = buffer.getvalue()
    return data[: len(data) // 2]


@pytest.fixture(autouse=True, scope="module")
def quiet_datasets():
    """datasets' progress bars go to stderr; the catalogue checks that stderr holds one error line."""
    import datasets

    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    import timm
    from safetensors.torch import save_file

    from hf_freqkd.data import load_digits_dataset
    from hf_freqkd.layers.frequency_prompts import save_prompts

    root = tmp_path_factory.mktemp("assets")
    found = {}
    found["teacher_100"] = _save_timm_folder(timm.create_model("resnet8", num_classes=100), root / "teacher_100")
    nan_teacher = timm.create_model("resnet8", num_classes=10)
    with torch.no_grad():
        nan_teacher.fc.weight[3, 0] = float("nan")
    found["teacher_nan"] = _save_timm_folder(nan_teacher, root / "teacher_nan")
    save_file(timm.create_model("resnet14", num_classes=10).state_dict(), str(root / "resnet14.safetensors"))
    found["resnet14_weights"] = str(root / "resnet14.safetensors")
    (root / "garbage.safetensors").write_bytes(b"these bytes are not a checkpoint")
    found["garbage_weights"] = str(root / "garbage.safetensors")
    # "-" sorts first: the probe reads it before training; "zz_" is only met while training.
    found["truncated_first"] = _image_folder(root / "trunc_first", {"cat/-broken.png": _truncated("PNG")})
    found["truncated_later"] = _image_folder(root / "trunc_later", {"dog/zz_broken.jpg": _truncated("JPEG")})
    (root / "empty" / "train" / "cat").mkdir(parents=True)
    found["empty_folder"] = str(root / "empty")
    digits = load_digits_dataset()["train"]
    digits.select([]).to_parquet(str(root / "empty.parquet"))
    found["empty_parquet"] = str(root / "empty.parquet")
    negative = digits.select(range(8)).cast_column("label", __import__("datasets").Value("int64"))
    negative = negative.map(lambda row, i: {"label": -1 if i == 0 else row["label"]}, with_indices=True)
    negative.to_parquet(str(root / "negative.parquet"))
    found["negative_parquet"] = str(root / "negative.parquet")
    digits.select(range(32)).to_parquet(str(root / "train_only.parquet"))
    found["train_only_parquet"] = str(root / "train_only.parquet")
    (root / "labels.csv").write_text("image,label\n")
    found["csv"] = str(root / "labels.csv")
    # Prompts fitted for a teacher whose layer3 has 7 channels (resnet8's has 64).
    found["prompts_other"] = str(
        save_prompts(root / "other.safetensors", {"layer3": torch.zeros(4, 2, 7)}, wavelet="haar", mode="zero", levels=3)
    )
    return found


# ----------------------------------------------------------------------------------------------
# The catalogue


def raw_config(text: str):
    return lambda assets, tmp: {"raw": text}


CASES = [
    # --- config files and values
    ("yaml_that_does_not_parse", raw_config("output_dir: x\nmethods: {kd: [\n"), ["is not valid YAML", "line 3", "bad.yaml"]),
    ("yaml_that_is_a_list", raw_config("- output_dir\n- learning_rate\n"), ["must hold a mapping of key: value, not list"]),
    ("config_file_missing", lambda a, t: {"argv": ["--config", str(t / "nowhere.yaml")], "no_config": True}, ["config file", "nowhere.yaml' does not exist"]),
    ("unknown_key", lambda a, t: {"learnig_rate": 0.1}, ["unknown config key 'learnig_rate' (did you mean learning_rate?)"]),
    ("wrong_type_integer", lambda a, t: {"per_device_train_batch_size": "many"}, ["'per_device_train_batch_size' = 'many'", "expected an integer"]),
    ("wrong_type_bool", lambda a, t: {"use_cpu": "yes please"}, ["'use_cpu' = 'yes please'", "expected true or false"]),
    ("negative_learning_rate", lambda a, t: {"learning_rate": -0.1}, ["learning_rate = -0.1 is invalid", "a finite number >= 0"]),
    ("nan_learning_rate", lambda a, t: {"argv": ["learning_rate=.nan"]}, ["learning_rate = nan is invalid"]),
    ("negative_epochs", lambda a, t: {"max_steps": -1, "num_train_epochs": -2}, ["num_train_epochs = -2.0 is invalid", "> 0"]),
    ("negative_method_weight", lambda a, t: {**KD, "argv": ["methods.kd.weight=-1"]}, ["method 'kd'", "option 'weight' = -1.0 is invalid", ">= 0"]),
    ("zero_temperature", lambda a, t: {**KD, "methods": {"kd": {"temperature": 0}}}, ["option 'temperature' = 0.0 is invalid", "> 0"]),
    ("negative_dkd_temperature", lambda a, t: {**KD, "methods": {"dkd": {"temperature": -4}}}, ["method 'dkd'", "'temperature' = -4.0"]),
    ("nan_temperature", lambda a, t: {**KD, "argv": ["methods.kd.temperature=.nan"]}, ["option 'temperature' = nan is invalid"]),
    ("unknown_method", lambda a, t: {"methods": {"fancy": {}}}, ["unknown method 'fancy'", "registered methods: ce, dkd"]),
    ("unknown_method_option", lambda a, t: {**KD, "methods": {"kd": {"temp": 2}}}, ["method 'kd' has no option 'temp'", "valid options: temperature, weight"]),
    ("method_option_wrong_type", lambda a, t: {**KD, "argv": ["methods.kd.temperature=hot"]}, ["option 'temperature' = 'hot' is invalid", "expected a number"]),
    ("method_layers_not_a_list", lambda a, t: {**KD, "methods": {"fam": {"student_layers": "layer1"}}}, ["option 'student_layers' = 'layer1'", "expected a list"]),
    ("methods_not_a_mapping", lambda a, t: {"methods": 5}, ["methods = 5 is invalid", "mapping of method name to options"]),
    ("output_dir_missing", lambda a, t: {"output_dir": None}, ["output_dir is not set", "output_dir=<folder>"]),
    ("override_without_equals", lambda a, t: {"argv": ["learning_rate0.1"]}, ["override 'learning_rate0.1' is invalid: expected key=value"]),
    ("override_not_yaml", lambda a, t: {"argv": ["methods={kd: ["]}, ["override 'methods={kd: ['", "not valid YAML"]),
    ("teacher_run_with_kd", lambda a, t: {**KD, "command": "train-teacher"}, ["train-teacher trains with the ce method alone; remove kd"]),
    ("warmup_steps_and_epochs", lambda a, t: {"distill_warmup_steps": 5, "distill_warmup_epochs": 1}, ["distill_warmup_steps or distill_warmup_epochs, not both"]),
    ("zero_image_size", lambda a, t: {"image_size": 0}, ["image_size = 0 is invalid: expected an integer >= 1"]),
    ("unknown_augmentation", lambda a, t: {"augmentation": "mixup"}, ["augmentation = 'mixup' is invalid", "crop_flip"]),
    ("unknown_nonfinite_policy", lambda a, t: {"nonfinite_loss": "ignore"}, ["nonfinite_loss = 'ignore' is invalid", "'stop' or 'skip'"]),
    # --- data
    ("dataset_path_missing", lambda a, t: {"dataset": str(t / "no_such_images")}, ["dataset", "no_such_images' does not exist", "image folder"]),
    ("dataset_not_parquet", lambda a, t: {"dataset": a["csv"]}, ["labels.csv' is a file but not a .parquet file"]),
    ("empty_image_folder", lambda a, t: {"dataset": a["empty_folder"]}, ["empty' holds no image files", "<class>/<image>"]),
    ("empty_parquet", lambda a, t: {"dataset": a["empty_parquet"]}, ["empty.parquet' is empty", "no rows"]),
    ("labels_outside_class_range", lambda a, t: {"num_classes": 5}, ["labels [5, 6, 7, 8, 9] lie outside the model's 5 classes", "num_classes"]),
    ("negative_labels", lambda a, t: {"dataset": a["negative_parquet"]}, ["label column 'label' holds [-1]", "integers >= 0"]),
    ("truncated_png_first_row", lambda a, t: {"dataset": a["truncated_first"], "command": "train-teacher", "methods": {"ce": {}}}, ["-broken.png", "could not be read", "remove or replace"]),
    ("truncated_jpeg_met_while_training", lambda a, t: {"dataset": a["truncated_later"], "command": "train-teacher", "during_training": True}, ["zz_broken.jpg", "could not be read", "remove or replace"]),
    ("label_column_missing", lambda a, t: {"label_column": "digit"}, ["label column 'digit' is not in the dataset; its columns are: image, label"]),
    ("eval_split_missing", lambda a, t: {"eval_split": "dev"}, ["eval split 'dev' does not exist", "splits: train, test"]),
    ("eval_without_eval_split", lambda a, t: {"dataset": a["train_only_parquet"], "eval_strategy": "steps"}, ["eval_strategy is 'steps' but the dataset has no evaluation split", "validation_fraction"]),
    # --- models and checkpoints
    ("unknown_student_model", lambda a, t: {"student_model": "resnet9000"}, ["model 'resnet9000' is not a timm model name"]),
    ("teacher_missing", lambda a, t: {"methods": {"kd": {}}}, ["kd need a teacher", "teacher_model"]),
    ("teacher_on_another_label_set", lambda a, t: {**KD, "teacher_model": a["teacher_100"]}, ["teacher has 100 classes but the student has 10", "num_classes"]),
    ("teacher_with_nan_weights", lambda a, t: {**KD, "teacher_model": a["teacher_nan"]}, ["teacher", "non-finite", "fc.weight", "teacher_nan"]),
    ("teacher_kwargs_unknown", lambda a, t: {**KD, "teacher_model_kwargs": {"bogus": 1}}, ["model 'resnet8' does not accept", "bogus", "teacher_model_kwargs"]),
    ("student_checkpoint_missing", lambda a, t: {"student_checkpoint": str(t / "weights.safetensors")}, ["checkpoint", "weights.safetensors' does not exist"]),
    ("checkpoint_of_another_architecture", lambda a, t: {"student_checkpoint": a["resnet14_weights"]}, ["resnet14.safetensors' does not fit CifarResNet", "unexpected"]),
    ("checkpoint_corrupted", lambda a, t: {"student_checkpoint": a["garbage_weights"]}, ["garbage.safetensors' could not be read"]),
    ("image_size_the_model_cannot_take", lambda a, t: {"student_model": "test_vit", "image_size": 24}, ["student (VisionTransformer) cannot take inputs of shape (3, 24, 24)", "image_size"]),
    # --- method options that only the models can check
    ("feature_layer_missing", lambda a, t: {**KD, "methods": {"fam_l2l": {"student_layers": ["layer9"], "teacher_layers": ["layer3"]}}}, ["layer 'layer9' does not exist in CifarResNet", "stage layers: layer1, layer2, layer3"]),
    ("figkd_levels_too_deep", lambda a, t: {**KD, "methods": {"figkd": {"levels": 6}}}, ["option 'levels' = 6 is invalid", "for 10 classes"]),
    ("prompts_for_another_teacher", lambda a, t: {**KD, "methods": {"freekd": {"prompts_path": a["prompts_other"], "teacher_layers": ["layer3"]}}}, ["other.safetensors' has prompts of shape (4, 2, 7)", "needs shape (4, 2, 64)", "fitted for another teacher"]),
    ("prompts_file_missing", lambda a, t: {**KD, "methods": {"freekd": {"prompts_path": str(t / "p.safetensors")}}}, ["p.safetensors' does not exist", "fit-prompts"]),
    # --- output folder and resuming
    ("output_dir_with_another_runs_checkpoints", lambda a, t: {"pre_checkpoint": True}, ["already holds a run (checkpoint-100)", "resume_from_checkpoint=true", "another output_dir"]),
    ("output_dir_is_a_file", lambda a, t: {"output_dir_file": True}, ["exists and is not a folder"]),
    ("read_only_output_dir", lambda a, t: {"read_only": True}, ["is not writable", "permissions"]),
    ("resume_from_missing_checkpoint", lambda a, t: {"resume_from_checkpoint": str(t / "checkpoint-7")}, ["resume_from_checkpoint", "checkpoint-7' does not exist"]),
    ("resume_without_checkpoints", lambda a, t: {"resume_from_checkpoint": True}, ["resume_from_checkpoint is true but output_dir", "holds no checkpoint-* folder"]),
    # --- command line
    ("unknown_command", lambda a, t: {"argv_only": ["destill"]}, ["invalid choice: 'destill'", "hf-freqkd --help"]),
    ("unknown_option_flag", lambda a, t: {"argv": ["--confg", "x.yaml"]}, ["unrecognized arguments: --confg", "hf-freqkd --help"]),
    # --- numbers going bad during training
    ("nan_loss_term_during_training", lambda a, t: {"methods": {"ce": {}, "test_nan_at_step": {"at_step": 2}}, "max_steps": 3, "during_training": True, "exit_code": 1}, ["loss term 'loss_test_nan' is nan at step 2", "nonfinite_loss=skip"]),
]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def nan_method():
    """A registered method whose term is NaN at the N-th training forward (1-based)."""
    from dataclasses import dataclass, field

    @dataclass
    class NaNOptions(MethodOptions):
        at_step: int = field(default=1, metadata={"help": "training forward at which the term is NaN"})

    class NaNAtStep(DistillationMethod):
        name = "test_nan_at_step"
        options_class = NaNOptions
        uses_teacher = False

        def __init__(self, options=None):
            super().__init__(options)
            self.calls = 0

        def forward(self, student, teacher, labels):
            self.calls += 1
            value = student.logits.float().mean() * 0
            return {"loss_test_nan": value + float("nan") if self.calls == self.options.at_step else value}

    register_method(NaNAtStep)
    yield
    _METHODS.pop("test_nan_at_step")


@pytest.mark.parametrize("name, setup, fragments", CASES, ids=[case[0] for case in CASES])
def test_bad_input_gives_one_clear_error_and_touches_nothing(name, setup, fragments, assets, tmp_path, capsys, monkeypatch, nan_method):
    tweak = dict(setup(assets, tmp_path))
    output_dir = tmp_path / "out"
    values = tiny_run_config(output_dir)
    # Whatever a user had in output_dir must survive a failed run byte for byte.
    output_dir.mkdir()
    keep = output_dir / "notes.txt"
    keep.write_text("results of last week")
    os.utime(keep, ns=(1_000_000_000, 1_000_000_000))
    if tweak.pop("pre_checkpoint", False):
        (output_dir / "checkpoint-100").mkdir()
        (output_dir / "checkpoint-100" / "model.safetensors").write_bytes(b"precious")
    if tweak.pop("output_dir_file", False):
        values["output_dir"] = str(keep)
    if tweak.pop("read_only", False):
        output_dir.chmod(0o555)
        if os.geteuid() == 0:  # root ignores permission bits: emulate what everyone else sees
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == output_dir and mode & os.W_OK else real_access(path, mode, **kw))
    before = snapshot(output_dir)
    during_training = tweak.pop("during_training", False)
    # The documented exit codes: 2 for the user's bad input (argparse's too), 1 for a run that started and failed.
    expected_code = tweak.pop("exit_code", 2)

    command = tweak.pop("command", "distill")
    argv = tweak.pop("argv", [])
    if "argv_only" in tweak:
        full_argv = tweak.pop("argv_only")
    else:
        config = tmp_path / "bad.yaml"
        if "raw" in tweak:
            config.write_text(tweak.pop("raw"))
        else:
            values.update(tweak)
            write_run_config(config, values)
        full_argv = [command, *([] if tweak.get("no_config") else ["--config", str(config)]), *argv]
    try:
        code = main(full_argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    finally:
        output_dir.chmod(0o755)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expected_code, err
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    after = snapshot(output_dir)
    assert {name: after.get(name) for name in before} == before
    if not during_training:  # known before training: nothing written at all
        assert after == before


def test_catalogue_is_large_enough():
    assert len(CASES) >= 25


# ----------------------------------------------------------------------------------------------
# Detection: bad boxes and mismatched detectors, each refused before anything is written

#: boxes ([x, y, w, h]) and categories of the tiny detection set; the cases replace row 3
DETECTION_BOXES = [[[2, 2, 12, 10]], [[10, 4, 8, 20], [0, 16, 30, 14]], [[20, 20, 10, 10]], [[4, 6, 20, 20]]] * 2
DETECTION_CATEGORIES = [[0], [1, 2], [2], [1]] * 2


def _detection_parquet(path: Path, row_3: tuple[list, list] | None = None) -> str:
    """Eight 32x32 images in the Hub's detection layout (image + objects {bbox, category}), row 3 replaced."""
    import datasets
    import numpy as np
    from PIL import Image

    boxes, categories = list(DETECTION_BOXES), list(DETECTION_CATEGORIES)
    if row_3 is not None:
        boxes[3], categories[3] = row_3
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "objects": datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32"), length=4), "category": datasets.Value("int64")}),
        }
    )
    rows = {
        "image": [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in boxes],
        "objects": [{"bbox": b, "category": c} for b, c in zip(boxes, categories)],
    }
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return str(path)


@pytest.fixture(scope="module")
def detection_assets(tmp_path_factory):
    from hf_freqkd.layers.frequency_prompts import save_prompts

    root = tmp_path_factory.mktemp("detection")
    found = {"good": _detection_parquet(root / "good.parquet")}
    for name, row in {
        "outside": ([[20, 4, 20, 8]], [0]),  # x + w = 40 in a 32 px image
        "zero_width": ([[4, 4, 0, 8]], [0]),
        "negative_height": ([[4, 4, 8, -3]], [0]),
        "category_5": ([[4, 4, 8, 8]], [5]),  # num_classes is 3
        "empty_image": ([], []),
    }.items():
        found[name] = _detection_parquet(root / f"{name}.parquet", row)
    # Prompts fitted for a teacher whose fpn.p4 has 7 channels (retinanet_resnet8's has 32).
    found["prompts_other"] = str(
        save_prompts(root / "other.safetensors", {"fpn.p4": torch.zeros(4, 2, 7)}, wavelet="haar", mode="zero", levels=3)
    )
    return found


def tiny_detection_config(output_dir: Path, dataset: str, **overrides) -> dict:
    """A tiny detection run: retinanet_resnet8 on eight 32 px images, three classes, one step."""
    return tiny_run_config(
        output_dir, student_model="retinanet_resnet8", task="detection", dataset=dataset, image_size=32, num_classes=3,
        max_train_samples=None, max_eval_samples=None, per_device_train_batch_size=4, per_device_eval_batch_size=4, **overrides,
    )


DETECTOR_TEACHER = {"teacher_model": "retinanet_resnet8", "methods": {"ce": {}, "feature_mse": {}}}

# (name, tweak(assets) merged into the tiny detection run, the error class, fragments of the one error line)
DETECTION_CASES = [
    ("box_outside_the_image", lambda a: {"dataset": a["outside"]}, DataError,
     ["row 3, object 0: bbox [20.0, 4.0, 20.0, 8.0] ([x, y, w, h]) reaches outside the 32x32 image", "x + w <= 32", "bbox_format"]),
    ("box_of_zero_width", lambda a: {"dataset": a["zero_width"]}, DataError,
     ["row 3, object 0: bbox [4.0, 4.0, 0.0, 8.0] has width 0.0 and height 8.0: expected both > 0"]),
    ("box_of_negative_height", lambda a: {"dataset": a["negative_height"]}, DataError,
     ["row 3, object 0: bbox [4.0, 4.0, 8.0, -3.0] has width 8.0 and height -3.0: expected both > 0"]),
    ("category_outside_the_label_set", lambda a: {"dataset": a["category_5"]}, DataError,
     ["row 3, object 0: category 5 lies outside the model's 3 classes", "expected an integer in 0..2", "num_classes"]),
    ("classification_teacher_for_a_detector", lambda a: {**DETECTOR_TEACHER, "teacher_model": "resnet8"}, ModelError,
     ["student TimmDetector is an object detector but the teacher CifarResNet is an image classifier", "same task"]),
    ("fpn_levels_that_differ", lambda a: {**DETECTOR_TEACHER, "teacher_model": "retinanet_resnet18"}, ModelError,
     ["FPN levels of the student (fpn.p1 (stride 2)", "the teacher (fpn.p3 (stride 8)", "fpn.p7 (stride 128)) differ"]),
    ("prompts_fitted_on_another_teacher",
     lambda a: {**DETECTOR_TEACHER, "methods": {"freekd": {"prompts_path": a["prompts_other"], "teacher_layers": ["fpn.p4"], "student_layers": ["fpn.p4"]}}},
     MethodOptionsError, ["other.safetensors' has prompts of shape (4, 2, 7) for teacher layer 'fpn.p4'", "needs shape (4, 2, 32)", "fitted for another teacher"]),
    ("kd_on_a_detector", lambda a: {**DETECTOR_TEACHER, "methods": {"ce": {}, "kd": {}}}, MethodOptionsError,
     ["kd do not apply to detection", "methods that do: ce, fam, fam_l2l, feature_mse, freekd"]),
]


@pytest.mark.parametrize("name, tweak, error_class, fragments", DETECTION_CASES, ids=[case[0] for case in DETECTION_CASES])
def test_bad_detection_input_is_refused_in_one_line_before_anything_is_written(
    name, tweak, error_class, fragments, detection_assets, tmp_path, capsys
):
    from hf_freqkd.run import prepare_run

    output_dir = tmp_path / "out"
    values = {**tiny_detection_config(output_dir, detection_assets["good"]), **tweak(detection_assets)}
    with pytest.raises(error_class):
        prepare_run("distill", defaults=values)
    config = write_run_config(tmp_path / "bad.yaml", values)
    capsys.readouterr()
    assert main(["distill", "--config", str(config)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not output_dir.exists()


def test_an_image_without_objects_is_valid_and_the_run_trains(detection_assets, tmp_path, capsys):
    output_dir = tmp_path / "out"
    # Eight rows, batches of four, two steps: every row is trained on once, the empty one too.
    values = tiny_detection_config(output_dir, detection_assets["empty_image"], max_steps=2, **DETECTOR_TEACHER)
    assert main(["distill", "--config", str(write_run_config(tmp_path / "c.yaml", values))]) == 0, capsys.readouterr().err
    assert (output_dir / "student" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------
# Faults while writing


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    """ENOSPC injected into the second checkpoint's weights: the first checkpoint and other files stay intact."""
    import safetensors.torch

    output_dir = tmp_path / "out"
    config = tmp_path / "c.yaml"
    write_run_config(config, tiny_run_config(output_dir, max_steps=2, save_strategy="steps", save_steps=1))
    real_save = safetensors.torch.save_file
    saved = []

    def save_file(tensors, filename, *args, **kwargs):
        if saved:  # the second save: half a file, then the disk is full
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        saved.append(filename)
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    assert main(["train-teacher", "--config", str(config)]) == 1  # the run started and failed
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "No space left on device" in lines[0] and "checkpoint-2" in lines[0]
    assert "checkpoint-1 is intact" in lines[0] and "resume_from_checkpoint=true" in lines[0]
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-1"]  # no partial checkpoint-2
    assert not list(output_dir.rglob("checkpoint-2"))
    first = output_dir / "checkpoint-1"
    assert {"model.safetensors", "trainer_state.json", "optimizer.pt"} <= {p.name for p in first.iterdir()}
    from safetensors.torch import load_file

    assert load_file(str(first / "model.safetensors"))  # readable, complete


def test_bad_input_through_a_real_subprocess(tmp_path):
    config = tmp_path / "c.yaml"
    write_run_config(config, tiny_run_config(tmp_path / "out", methods={"kd": {"temperature": -1}}))
    result = subprocess.run(
        [sys.executable, "-m", "hf_freqkd.cli", "distill", "--config", str(config)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["hf-freqkd distill: error: method 'kd': option 'temperature' = -1.0 is invalid: expected a finite number > 0 (within [0.001, 1000])"]
    assert not (tmp_path / "out").exists()

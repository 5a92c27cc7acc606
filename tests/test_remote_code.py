"""Exports load without hf_freqkd: the card's own lines, run where ``import hf_freqkd`` is impossible.

Each test exports a student, runs the transformers lines of its model card ("How to use") in a
fresh interpreter in which hf_freqkd cannot be imported, and compares what the task's pipeline and
the model return with what hf_freqkd computes on the same images through its own evaluation
transform: the class names, the softmax scores, the segmentation masks and the boxes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import hf_freqkd  # noqa: F401  registers the networks the exports are built from
from hf_freqkd.cli import main
from hf_freqkd.data import load_digits_dataset
from hf_freqkd.data.loading import build_image_transform
from hf_freqkd.export import export_student
from hf_freqkd.config import DataArguments
from hf_freqkd.models import load_model, resolve_input_config
from hf_freqkd.run import input_config_for

from .helpers import exported_files, tiny_run_config, write_run_config

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
#: an image folder's classes are its sub-folders in alphabetical order ("eight" is class 0)
FOLDER_ORDER = sorted(DIGIT_NAMES)

#: run first in the subprocess: any import of hf_freqkd (the card's lines, the modeling code) fails
WITHOUT_HF_FREQKD = "import sys\nsys.modules['hf_freqkd'] = None\n"


def card_transformers_lines(folder: Path) -> str:
    """The Python blocks of the card's "How to use" that use transformers, with the folder as the repo."""
    card = (folder / "README.md").read_text()
    usage = card.split("## How to use")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", usage, flags=re.S)
    lines = "\n".join(block for block in blocks if "transformers" in block)
    return lines.replace('"<repo id or path>"', repr(str(folder)))


def run_without_hf_freqkd(script: str, tmp_path: Path) -> dict:
    """Run ``script`` in a new interpreter that cannot import hf_freqkd; return the JSON it prints last."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_HF_FREQKD + script], capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "hf_freqkd" not in result.stderr, result.stderr[-2000:]
    assert "is not supported for" not in result.stderr  # the export's pipeline (custom_pipelines) knows its class
    return json.loads(result.stdout.strip().splitlines()[-1])


def library_pixel_values(model, images: list[Image.Image], image_size: int | None = None) -> torch.Tensor:
    """The images as a run evaluates them: the model's input config with the run's ``image_size``
    (:func:`hf_freqkd.run.input_config_for`), timm's evaluation transform."""
    input_config = input_config_for(model, DataArguments(image_size=image_size))
    transform = build_image_transform(input_config, training=False)
    mode = "L" if input_config["input_size"][0] == 1 else "RGB"
    return torch.stack([transform(image.convert(mode)) for image in images])


# -- classification ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def named_digits_run(tmp_path_factory):
    """A resnet8 trained (two steps) on an image folder whose class folders are zero ... nine."""
    root = tmp_path_factory.mktemp("named_digits")
    digits = load_digits_dataset()
    for split, count in (("train", 6), ("test", 2)):
        per_class: dict[int, int] = {}
        for row in digits[split]:
            label = row["label"]
            if per_class.get(label, 0) < count:
                folder = root / "data" / split / DIGIT_NAMES[label]
                folder.mkdir(parents=True, exist_ok=True)
                row["image"].save(folder / f"{per_class.get(label, 0)}.png")
                per_class[label] = per_class.get(label, 0) + 1
    config = tiny_run_config(root / "run", dataset=str(root / "data"), max_steps=2, image_size=16)
    assert main(["train-teacher", "--config", str(write_run_config(root / "config.yaml", config))]) == 0
    return root


def test_an_image_folder_student_names_its_classes_in_config_and_card(named_digits_run):
    folder = named_digits_run / "run" / "student"
    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"] == FOLDER_ORDER
    assert config["id2label"] == {str(i): name for i, name in enumerate(FOLDER_ORDER)}
    assert config["label2id"] == {name: i for i, name in enumerate(FOLDER_ORDER)}
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_hf_freqkd.HfFreqKDImageClassifier"
    assert {p.name for p in folder.iterdir()} == exported_files()
    card = (folder / "README.md").read_text()
    assert "10 classes, by class id: `0` eight, `1` five, `2` four" in card
    assert "trained alone, with cross-entropy on the labels and no teacher" in card


def test_the_cards_lines_classify_without_hf_freqkd_as_the_library_does(named_digits_run, tmp_path):
    folder = named_digits_run / "run" / "student"
    images = sorted((named_digits_run / "data" / "test").glob("*/*.png"))[:4]
    script = card_transformers_lines(folder).replace('predict("image.jpg")', "predictions = [predict(str(p), top_k=10) for p in paths]")
    script = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from PIL import Image
        paths = {[str(p) for p in images]!r}
        image = Image.open(paths[0])
        """
    ) + script + "\nprint(json.dumps({'predictions': predictions, 'logits': outputs.logits.tolist(), 'class': type(model).__name__}))\n"
    result = run_without_hf_freqkd(script, tmp_path)
    assert result["class"] == "HfFreqKDImageClassifier"

    student = load_model(str(folder)).eval()
    with torch.no_grad():
        probabilities = student(library_pixel_values(student, [Image.open(p) for p in images])).softmax(-1)
    for predicted, expected in zip(result["predictions"], probabilities):
        scores = {entry["label"]: entry["score"] for entry in predicted}
        assert set(scores) == set(DIGIT_NAMES)
        np.testing.assert_allclose([scores[name] for name in FOLDER_ORDER], expected.numpy(), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        first = student(library_pixel_values(student, [Image.open(images[0])]))
    np.testing.assert_allclose(result["logits"], first.numpy(), rtol=1e-4, atol=1e-5)


def test_loading_an_export_where_hf_freqkd_is_installed_does_not_import_it(named_digits_run, tmp_path):
    folder = named_digits_run / "run" / "student"
    script = (
        "import json, sys\nfrom transformers import pipeline\n"
        f"predict = pipeline('image-classification', model={str(folder)!r}, trust_remote_code=True)\n"
        "print(json.dumps({'imported': sorted(name for name in sys.modules if name.split('.')[0] == 'hf_freqkd')}))\n"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # The carried files register their networks in timm once, under the export's own module names.
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"imported": []}
    assert "Overwriting" not in result.stderr


def test_a_student_timm_knows_carries_no_code_and_loads_without_trusting_any(tmp_path):
    student = timm.create_model("test_resnet", num_classes=3).eval()
    student.hf_freqkd_model_args = {}
    record = {"config": {"student_model": "test_resnet", "dataset": "digits", "image_size": 32}, "metrics": {}, "class_names": ["cat", "dog", "fox"]}
    folder = export_student(student, tmp_path / "export", record)
    assert {p.name for p in folder.iterdir()} == exported_files(carries_code=False)
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    assert "trust_remote_code" not in (folder / "README.md").read_text()
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8")).save(tmp_path / "photo.png")
    script = card_transformers_lines(folder).replace('predict("image.jpg")', "predictions = predict('photo.png')")
    script = "import json\nfrom PIL import Image\nimage = Image.open('photo.png')\n" + script
    script += "\nprint(json.dumps({'predictions': predictions, 'logits': outputs.logits.tolist()}))\n"
    result = run_without_hf_freqkd(script, tmp_path)
    with torch.no_grad():  # the student as trained, its images as the run evaluated them (image_size 32)
        logits = student(library_pixel_values(student, [Image.open(tmp_path / "photo.png")], image_size=32))
    np.testing.assert_allclose(result["logits"], logits.numpy(), rtol=1e-4, atol=1e-5)
    assert {entry["label"] for entry in result["predictions"]} == {"cat", "dog", "fox"}


# -- segmentation and detection ----------------------------------------------------------------


def _scenes(size: int, count: int, seed: int = 0) -> list[Image.Image]:
    from hf_freqkd.data.shapes_segmentation import draw_scene

    rng = np.random.default_rng(seed)
    return [draw_scene(rng, size, 4, 2, False)[0] for _ in range(count)]


def test_a_segmentation_export_runs_the_image_segmentation_pipeline_without_hf_freqkd(tmp_path):
    student = timm.create_model("segfpn_resnet8", num_classes=4).eval()
    student.hf_freqkd_model_args = {}
    names = ["background", "circle", "square", "triangle"]
    record = {"config": {"student_model": "segfpn_resnet8", "task": "segmentation", "dataset": "shapes_segmentation", "image_size": 32},
              "metrics": {}, "class_names": names}
    folder = export_student(student, tmp_path / "export", record)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_hf_freqkd.HfFreqKDSemanticSegmenter"
    assert config["pretrained_cfg"]["crop_mode"] == "squash"  # hf_freqkd's segmentation transform resizes to the input size
    scene = _scenes(32, 1)[0]
    scene.save(tmp_path / "scene.png")
    wide = scene.resize((45, 27))  # not the input size, not square: the processor must resize as training evaluated
    wide.save(tmp_path / "wide.png")
    script = card_transformers_lines(folder).replace('predict("image.jpg")', "segments = predict('scene.png')")
    script = "import json\nimport numpy as np\nfrom PIL import Image\nimage = Image.open('wide.png')\n" + script
    script += (
        "\nmasks = {s['label']: (np.asarray(s['mask']) > 0).tolist() for s in segments}"
        "\nprint(json.dumps({'masks': masks, 'logits': outputs.logits.tolist(),"
        " 'pixels': processor(image, return_tensors='pt').pixel_values.tolist()}))\n"
    )
    result = run_without_hf_freqkd(script, tmp_path)

    from hf_freqkd.data.segmentation import build_segmentation_transform
    from torchvision import tv_tensors

    reloaded = load_model(str(folder)).eval()
    transform = build_segmentation_transform(resolve_input_config(reloaded), training=False)
    expected_pixels, _ = transform(wide, tv_tensors.Mask(torch.zeros(27, 45, dtype=torch.uint8)))
    np.testing.assert_allclose(result["pixels"][0], expected_pixels.numpy(), atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(result["logits"], reloaded(expected_pixels[None]).numpy(), rtol=1e-4, atol=1e-5)
        classes = reloaded(library_pixel_values(reloaded, [scene])).argmax(1)[0]
    assert set(result["masks"]) == {names[i] for i in classes.unique().tolist()}
    for index, name in enumerate(names):
        if name in result["masks"]:
            assert (np.asarray(result["masks"][name]) == (classes == index).numpy()).all()


def test_a_detector_export_runs_the_object_detection_pipeline_without_hf_freqkd(tmp_path):
    student = timm.create_model("retinanet_resnet8", num_classes=3, score_threshold=0.0).eval()
    student.hf_freqkd_model_args = {"score_threshold": 0.0}
    names = ["square", "circle", "triangle"]
    record = {"config": {"student_model": "retinanet_resnet8", "task": "detection", "dataset": "shapes_detection", "image_size": 32},
              "metrics": {}, "class_names": names}
    folder = export_student(student, tmp_path / "export", record)
    scene = _scenes(32, 1)[0]
    scene.resize((64, 48)).save(tmp_path / "scene.png")  # boxes come back in this image's pixels
    script = card_transformers_lines(folder).replace('predict("image.jpg")', "found = predict('scene.png', threshold=0.0)")
    script = "import json\nfrom PIL import Image\nimage = Image.open('scene.png')\n" + script
    script += "\nprint(json.dumps({'found': found, 'detections': outputs.detections.tolist()}))\n"
    result = run_without_hf_freqkd(script, tmp_path)

    reloaded = load_model(str(folder)).eval()
    with torch.no_grad():
        rows = reloaded(library_pixel_values(reloaded, [Image.open(tmp_path / "scene.png")])).detections[0]
    np.testing.assert_allclose(result["detections"][0], rows.numpy(), rtol=1e-4, atol=1e-4)
    kept = rows[rows[:, 5] >= 0]
    kept = kept[kept[:, 4] > 0.0]
    assert len(result["found"]) == len(kept) > 0
    scale = torch.tensor([64 / 32, 48 / 32] * 2)
    for entry, row in zip(result["found"], kept):
        assert entry["label"] == names[int(row[5])]
        assert entry["score"] == pytest.approx(float(row[4]), rel=1e-4)
        box = (row[:4] * scale).int().tolist()
        assert [entry["box"][key] for key in ("xmin", "ymin", "xmax", "ymax")] == pytest.approx(box, abs=1)

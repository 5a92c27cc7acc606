"""Every shipped YAML config parses, builds its models and runs one training step.

Hub datasets are replaced by a tiny stand-in with the same columns and class count (for detection,
boxes in the config's bbox_format); generated sets are generated smaller; a teacher given as another
config's output folder is built from that config's architecture, which also checks that the configs
chain together.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import yaml
from PIL import Image

from hf_freqkd.benchmark.quality import load_benchmark_config
from hf_freqkd.config import parse_config
from hf_freqkd.prompt_fitting import run_fit_prompts
from hf_freqkd.run import prepare_run

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# configs/bench/ holds benchmark configs and configs/tune/ search configs (other schemas), tested in
# tests/benchmark/test_quality.py and tests/tune/; configs/accelerate/ holds Accelerate's own configs.
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.relative_to(CONFIG_DIR).parts[0] not in ("bench", "tune", "accelerate"))
BENCH_CONFIGS = sorted((CONFIG_DIR / "bench").glob("*.yaml"))
# Settings where TrainingArguments' defaults (clipping at norm 1, ...) are not the research code's: every
# classification and segmentation config sets them and names its source (docs/recipes.md); the
# detection configs set mmdetection's clipping the same way, next to their other mmdet settings.
RECIPE_KEYS = ("max_grad_norm", "weight_decay_on")
RECIPE_CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.relative_to(CONFIG_DIR).parts[0] not in ("detection", "accelerate"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def teacher_architecture(teacher_path: str) -> str:
    """The student_model of the config whose export folder is ``teacher_path``."""
    for other in CONFIGS:
        values = load(other)
        if f"{values['output_dir']}/student" == teacher_path:
            return values["student_model"]
    raise AssertionError(f"no config in configs/ produces the teacher folder {teacher_path}")


def stand_in_dataset(tmp_path: Path, values: dict, num_classes: int) -> str:
    """A parquet file with the config's column names: one 32x32 image per class."""
    image_column = values.get("image_column", "image")
    label_column = values.get("label_column", "label")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(num_classes)]
    features = datasets.Features({image_column: datasets.Image(), label_column: datasets.ClassLabel(num_classes=num_classes)})
    data = datasets.Dataset.from_dict({image_column: images, label_column: list(range(num_classes))}, features=features)
    path = tmp_path / "stand_in.parquet"
    data.to_parquet(str(path))
    return str(path)


def stand_in_segmentation_dataset(tmp_path: Path, values: dict) -> str:
    """A parquet file with the config's image and mask columns: four 32x32 images, masks holding
    every class id (shifted by one with reduce_labels) and the ignore index."""
    image_column = values.get("image_column", "image")
    mask_column = values.get("mask_column", "annotation")
    num_classes = values["num_classes"]
    offset = 1 if values.get("reduce_labels") else 0
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    ids = (np.arange(32 * 32).reshape(32, 32) % num_classes + offset).astype(np.uint8)
    ids[0] = values.get("ignore_index", 255)
    masks = [Image.fromarray(np.roll(ids, i, axis=1), mode="L") for i in range(4)]
    features = datasets.Features({image_column: datasets.Image(), mask_column: datasets.Image()})
    data = datasets.Dataset.from_dict({image_column: images, mask_column: masks}, features=features)
    path = tmp_path / "stand_in_segmentation.parquet"
    data.to_parquet(str(path))
    return str(path)


def stand_in_detection_dataset(tmp_path: Path, values: dict) -> str:
    """A parquet file with the config's image and objects columns, boxes in its bbox_format: four
    48x40 images holding two objects, one object and none (valid: background only), every class
    id of the first few among them."""
    image_column = values.get("image_column", "image")
    objects_column = values.get("label_column", "objects")
    num_classes = values.get("num_classes", 3)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(4)]
    coco_boxes = [[[2, 3, 20, 12], [24, 10, 16, 28]], [[0, 0, 48, 40]], [], [[30, 1, 10, 10], [5, 20, 8, 15]]]
    categories = [[0, 1 % num_classes], [2 % num_classes], [], [num_classes - 1, 0]]
    if values.get("bbox_format", "xywh") == "xyxy":
        boxes = [[[x, y, x + w, y + h] for x, y, w, h in row] for row in coco_boxes]
    else:
        boxes = coco_boxes
    features = datasets.Features(
        {
            image_column: datasets.Image(),
            "width": datasets.Value("int64"),
            "height": datasets.Value("int64"),
            objects_column: datasets.Sequence(
                {"bbox": datasets.Sequence(datasets.Value("float32"), length=4), "category": datasets.ClassLabel(num_classes=num_classes)}
            ),
        }
    )
    rows = {
        image_column: images,
        "width": [48] * 4,
        "height": [40] * 4,
        objects_column: [{"bbox": b, "category": c} for b, c in zip(boxes, categories)],
    }
    path = tmp_path / "stand_in_detection.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return str(path)


def test_configs_exist():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_builds_and_trains_one_step(config_path, tmp_path):
    values = load(config_path)
    # Two images a step for detectors: Faster R-CNN's box head runs on 512 sampled proposals per image.
    batch_size = 2 if values.get("task") == "detection" else 4
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        "max_steps=1",
        f"per_device_train_batch_size={batch_size}",
        "eval_strategy=no",
        "save_strategy=no",
        "dataloader_num_workers=0",
        "report_to=none",
        "use_cpu=true",
    ]
    if values.get("dataset") == "shapes_segmentation":
        # Generated offline: a smaller set of the same kind.
        overrides.append("dataset_config_name=num_train=8,num_test=4,image_size=32,num_classes=4")
    elif values.get("dataset") == "shapes_detection":
        overrides.append("dataset_config_name=num_train=8,num_test=4,image_size=64,num_classes=3,seed=0")
    elif values.get("task") == "detection":
        overrides.append(f"dataset={stand_in_detection_dataset(tmp_path, values)}")
        overrides += ["dataset_config_name=null", "eval_split=null", "validation_fraction=null", "image_size=64"]
        # At 64 px the ImageNet detectors' P6 is 1x1, and torch's CPU bf16 convolution gives wrong
        # weight gradients (inf, or a different value each call) for the stride-2 P7 conv over a 1x1
        # map (torch 2.14); at the recipes' 640 px on a GPU no map is that small.
        if values.get("bf16"):
            overrides.append("bf16=false")
    elif values.get("task") == "segmentation":
        overrides.append(f"dataset={stand_in_segmentation_dataset(tmp_path, values)}")
        overrides += ["dataset_config_name=null", "eval_split=null", "validation_fraction=null", "image_size=64"]
    elif values.get("dataset", "digits") != "digits":
        num_classes = 100 if "cifar100" in values["dataset"] else 10
        overrides.append(f"dataset={stand_in_dataset(tmp_path, values, num_classes)}")
        overrides.append("eval_split=null")
        overrides.append("validation_fraction=null")
    teacher = values.get("teacher_model")
    if teacher and not Path(teacher).exists() and not timm.is_model(teacher):
        overrides.append(f"teacher_model={teacher_architecture(teacher)}")
    # Pretrained weights come from the Hub: the offline test builds the same architectures at random.
    overrides += [f"{key}=false" for key in ("teacher_pretrained", "student_pretrained") if values.get(key)]
    if "freekd" in values.get("methods", {}):
        # FreeKD's stage 2 reads prompts that stage 1 fits: run stage 1 for one step first.
        overrides.append(f"methods.freekd.prompts_path={tmp_path / 'prompts.safetensors'}")
        run_fit_prompts(str(config_path), [*overrides, "methods.freekd.prompt_steps=1", f"methods.freekd.prompt_batch_size={batch_size}", "methods.freekd.prompt_report_batches=1"])
    mode = "teacher" if set(values.get("methods", {"ce": {}})) == {"ce"} and not teacher else "distill"
    trainer, args, *_ = prepare_run(mode, str(config_path), overrides)
    trainer.train()
    assert trainer.state.global_step == 1
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])


def is_benchmark(path: Path) -> bool:
    return path.relative_to(CONFIG_DIR).parts[0] == "bench"


def section_lines(path: Path, section: str | None) -> list[str]:
    """The lines of the top level (``section`` None) or of one top-level mapping of a YAML file,
    dedented: a benchmark's run settings live under ``common:``."""
    found, inside = [], section is None
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            inside = section is None or line.startswith(f"{section}:")
            if section is None:
                found.append(line)
            continue
        if inside and section is not None and line.startswith("  ") and not line[2].isspace():
            found.append(line[2:])
    return found


@pytest.mark.parametrize("config_path", RECIPE_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_sets_the_recipe_settings_and_names_their_source(config_path):
    section = "common" if is_benchmark(config_path) else None
    lines = section_lines(config_path, section)
    where = f"{config_path.name}{f' ({section}:)' if section else ''}"
    for key in RECIPE_KEYS:
        matches = [line for line in lines if re.match(rf"{key}\s*:", line)]
        assert len(matches) == 1, f"{where} sets {key} {len(matches)} times: set it once, with its source"
        _, _, comment = matches[0].partition("#")
        assert comment.strip(), f"{where}: '{matches[0]}' has no trailing '# source' comment naming the recipe it follows"


def run_configs(path: Path) -> list[dict]:
    """The run configs a file gives: itself, or a benchmark's teacher and student runs (first seed)."""
    if not is_benchmark(path):
        return [load(path)]
    config = load_benchmark_config(path)
    return [config.teacher_run_config(), *(config.student_run_config(method, config.seeds[0]) for method in config.methods)]


@pytest.mark.parametrize("config_path", [*CONFIGS, *BENCH_CONFIGS], ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_parses_with_the_recipe_settings_it_states(config_path, tmp_path):
    for values in run_configs(config_path):
        args, _, _ = parse_config(defaults={**values, "output_dir": str(tmp_path), "use_cpu": True})
        for key in RECIPE_KEYS:
            if key in values:
                assert getattr(args, key) == values[key], (config_path.name, key)

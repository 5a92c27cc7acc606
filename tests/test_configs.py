"""Every shipped YAML config parses, builds its models and runs one training step.

Hub datasets are replaced by a tiny stand-in with the same columns and class count; a teacher
given as another config's output folder is built from that config's architecture, which also
checks that the configs chain together.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import yaml
from PIL import Image

from hf_freqkd.prompt_fitting import run_fit_prompts
from hf_freqkd.run import prepare_run

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# configs/bench/ holds benchmark configs (a different schema), tested in tests/benchmark/test_quality.py.
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.relative_to(CONFIG_DIR).parts[0] != "bench")


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


def test_configs_exist():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_builds_and_trains_one_step(config_path, tmp_path):
    values = load(config_path)
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        "max_steps=1",
        "per_device_train_batch_size=4",
        "eval_strategy=no",
        "save_strategy=no",
        "dataloader_num_workers=0",
        "report_to=none",
        "use_cpu=true",
    ]
    if values.get("dataset") == "shapes_segmentation":
        # Generated offline: a smaller set of the same kind.
        overrides.append("dataset_config_name=num_train=8,num_test=4,image_size=32,num_classes=4")
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
        run_fit_prompts(str(config_path), [*overrides, "methods.freekd.prompt_steps=1", "methods.freekd.prompt_batch_size=4", "methods.freekd.prompt_report_batches=1"])
    mode = "teacher" if set(values.get("methods", {"ce": {}})) == {"ce"} and not teacher else "distill"
    trainer, args, *_ = prepare_run(mode, str(config_path), overrides)
    trainer.train()
    assert trainer.state.global_step == 1
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])

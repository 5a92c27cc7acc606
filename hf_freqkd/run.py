"""From a YAML config to a trained, evaluated and exported student: the code behind the CLI.

``hf-freqkd train-teacher`` and ``hf-freqkd distill`` both end here; so do
``accelerate launch scripts/train_teacher.py`` and ``scripts/distill.py``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DataArguments, DistillationConfig, ModelArguments, config_to_dict, parse_config
from .data.loading import (
    check_labels_in_range,
    count_classes,
    detect_columns,
    load_image_dataset,
    pick_split,
    with_image_transform,
)
from .data.segmentation import segmentation_data_functions
from .export import RUN_RECORD, STUDENT_EXPORT_DIR, export_student
from .model_card import training_recipe
from .models.loading import load_model, model_num_classes, resolve_input_config
from .push import push_folder
from .trainer import DistillationTrainer, set_seed_for

logger = logging.getLogger(__name__)



@dataclass
class RunResult:
    """What a run produced: final evaluation metrics, sizes, wall time and where the student went."""

    metrics: dict[str, float]
    student_parameters: int
    method_parameters: int
    teacher_parameters: int
    train_seconds: float
    export_dir: str | None
    hub_url: str | None = None


def prepare_run(
    mode: str, config_path: str | None = None, overrides: list[str] | None = None, defaults: dict[str, Any] | None = None
) -> tuple[DistillationTrainer, DistillationConfig, ModelArguments, DataArguments]:
    """Parse and validate everything, load data and models, and build the trainer. Writes nothing."""
    if mode not in ("teacher", "distill"):
        raise ValueError(f"mode '{mode}' is invalid: expected 'teacher' or 'distill'")
    base = {"methods": {"ce": {}}} if mode == "teacher" else {}
    args, model_args, data_args = parse_config(config_path, overrides, defaults={**base, **(defaults or {})})
    if mode == "teacher":
        extra = [name for name in args.methods if name != "ce"]
        if extra:
            raise ValueError(f"train-teacher trains with the ce method alone; remove {', '.join(extra)} from methods")
    check_output_dir(args)
    set_seed_for(args)  # the student (and a teacher built from a name) are created below, before the Trainer

    data = load_run_data(args, model_args, data_args)
    student = load_model(
        model_args.student_model,
        num_classes=data.num_classes,
        checkpoint=model_args.student_checkpoint,
        pretrained=model_args.student_pretrained,
        model_kwargs=model_args.student_model_kwargs,
        trust_remote_code=args.trust_remote_code,
    )
    train_dataset, eval_dataset = data.formatted(input_config_for(student, data_args), data_args.augmentation)
    if eval_dataset is None and args.eval_strategy != "no":
        raise ValueError(
            f"eval_strategy is '{getattr(args.eval_strategy, 'value', args.eval_strategy)}' but the dataset has no evaluation split (splits: {', '.join(data.splits)}); "
            "set validation_fraction to hold out part of the train split, eval_split, or eval_strategy: 'no'"
        )
    trainer = DistillationTrainer(model=student, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset)
    return trainer, args, model_args, data_args


@dataclass
class RunData:
    """A run's raw train/eval splits, checked, with what formats them for the model."""

    train: Any
    eval: Any
    image_column: str
    label_column: str
    num_classes: int
    splits: list[str]
    transform: Any  # with_image_transform, or the segmentation one

    def formatted(self, input_config: dict[str, Any], augmentation: str):
        """(train dataset, eval dataset or None) yielding ``pixel_values`` and ``labels``."""
        train = self.transform(self.train, self.image_column, self.label_column, input_config, training=True, augmentation=augmentation)
        evaluation = None
        if self.eval is not None:
            evaluation = self.transform(self.eval, self.image_column, self.label_column, input_config, training=False, augmentation="none")
        return train, evaluation


def load_run_data(args: DistillationConfig, model_args: ModelArguments, data_args: DataArguments) -> RunData:
    """Load the dataset, pick and cap the splits, find columns and classes, check every label.

    Shared by ``train-teacher``/``distill`` and FreeKD's ``fit-prompts``, so the teacher sees the
    same images in both stages.
    """
    data = load_image_dataset(data_args.dataset, data_args.dataset_config_name, args.trust_remote_code)
    splits = list(data)
    train_split = pick_split(splits, data_args.train_split, "train", ["train"])
    eval_split = pick_split(splits, data_args.eval_split, "eval", ["validation", "valid", "val", "test"])
    train_data = data[train_split]
    if len(train_data) == 0:
        raise ValueError(f"the train split '{train_split}' of dataset '{data_args.dataset}' is empty; point dataset at data with images")
    if data_args.task == "segmentation":
        # label_column is the mask column; transform and check are the per-pixel ones.
        image_column, label_column, num_classes, transform, check_labels = segmentation_data_functions(train_data, data_args, model_args.num_classes)
    else:
        image_column, label_column = detect_columns(train_data, data_args.image_column, data_args.label_column)
        num_classes = model_args.num_classes or count_classes(train_data, label_column)
        transform, check_labels = with_image_transform, check_labels_in_range
    eval_data = data[eval_split] if eval_split else None
    if data_args.validation_fraction:
        if eval_data is not None:
            raise ValueError(f"validation_fraction is set but the dataset already has the eval split '{eval_split}'; unset one of them")
        held_out = train_data.train_test_split(
            test_size=data_args.validation_fraction, seed=args.seed, stratify_by_column=label_column if _is_class_label(train_data, label_column) else None
        )
        train_data, eval_data, eval_split = held_out["train"], held_out["test"], f"{train_split} (held out)"
    if data_args.max_train_samples:
        train_data = train_data.select(range(min(data_args.max_train_samples, len(train_data))))
    if eval_data is not None and data_args.max_eval_samples:
        eval_data = eval_data.select(range(min(data_args.max_eval_samples, len(eval_data))))
    check_labels(train_data, label_column, num_classes, train_split)
    if eval_data is not None:
        check_labels(eval_data, label_column, num_classes, eval_split)
    return RunData(train_data, eval_data, image_column, label_column, num_classes, splits, transform)


def input_config_for(model, data_args: DataArguments) -> dict[str, Any]:
    """The model's input size and normalisation (timm pretrained_cfg), with ``image_size`` applied."""
    input_config = resolve_input_config(model)
    if data_args.image_size:
        input_config["input_size"] = (input_config["input_size"][0], data_args.image_size, data_args.image_size)
    return input_config


def _is_class_label(dataset, column: str) -> bool:
    import datasets

    return isinstance(dataset.features[column], datasets.ClassLabel)


def check_output_dir(args: DistillationConfig) -> None:
    """Refuse to train into a folder holding another run's checkpoints unless resuming from it."""
    output_dir = Path(args.output_dir)
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    if isinstance(resume, str) and resume and not os.path.isdir(resume):
        raise FileNotFoundError(
            f"resume_from_checkpoint '{resume}' does not exist: give a checkpoint-<step> folder of an earlier run, "
            "or true to resume from the latest checkpoint in output_dir"
        )
    if resume is True and not (output_dir.is_dir() and any(output_dir.glob("checkpoint-*"))):
        raise ValueError(
            f"resume_from_checkpoint is true but output_dir '{output_dir}' holds no checkpoint-* folder; "
            "unset resume_from_checkpoint to start a new run, or set output_dir to the run to continue"
        )
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ValueError(f"output_dir '{output_dir}' exists and is not a folder; choose a folder path")
    checkpoints = sorted(p.name for p in output_dir.glob("checkpoint-*"))
    if checkpoints and not args.resume_from_checkpoint:
        raise ValueError(
            f"output_dir '{output_dir}' already holds checkpoints ({', '.join(checkpoints[:3])}); "
            "set resume_from_checkpoint=true to continue that run, or choose another output_dir"
        )
    if not os.access(output_dir, os.W_OK):
        raise ValueError(f"output_dir '{output_dir}' is not writable; fix its permissions or choose another output_dir")


def run(mode: str, config_path: str | None = None, overrides: list[str] | None = None, defaults: dict[str, Any] | None = None) -> RunResult:
    """Train (a teacher, or a student by distillation), evaluate, export the student, record the run."""
    trainer, args, model_args, data_args = prepare_run(mode, config_path, overrides, defaults)
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    record: dict[str, Any] = {
        "mode": mode,
        "status": "training",
        "config": config_to_dict(args, model_args, data_args),
        "training": training_recipe(args),
        "num_classes": _num_classes_or_none(trainer.student),
    }
    if trainer.is_world_process_zero():
        # Written before training too, so a checkpoint of an unfinished run can be exported (hf-freqkd export).
        _write_record(args.output_dir, record)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume or None)
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    export_dir = hub_url = None
    if trainer.is_world_process_zero():
        teacher_parameters = sum(p.numel() for p in trainer.teacher.parameters()) if trainer.teacher is not None else 0
        record.update(status="finished", metrics=metrics, train_seconds=train_seconds, teacher_parameters=teacher_parameters)
        _write_record(args.output_dir, record)
        hub = trainer.hub_settings
        model_name = hub.repo_id.split("/")[-1] if hub.push_to_hub else Path(args.output_dir).resolve().name
        export_dir = str(export_student(trainer.student, Path(args.output_dir) / STUDENT_EXPORT_DIR, record, model_name))
        if hub.push_to_hub:
            # The exported student alone, once; the Trainer's own push is off (see hf_freqkd.push).
            hub_url = push_folder(
                export_dir, hub.repo_id, token=hub.token, private=hub.private, revision=hub.revision,
                commit_message=f"Upload {mode} run {Path(args.output_dir).name} with hf_freqkd",
            )
    return RunResult(
        metrics=metrics,
        student_parameters=sum(p.numel() for p in trainer.student.parameters()),
        method_parameters=trainer.accelerator.unwrap_model(trainer.model).trainable_method_parameters(),
        teacher_parameters=sum(p.numel() for p in trainer.teacher.parameters()) if trainer.teacher is not None else 0,
        train_seconds=train_seconds,
        export_dir=export_dir,
        hub_url=hub_url,
    )


def _num_classes_or_none(model) -> int | None:
    try:
        return model_num_classes(model)
    except ValueError:
        return None


def _write_record(output_dir: str, record: dict[str, Any]) -> None:
    path = Path(output_dir) / RUN_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))

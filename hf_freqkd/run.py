"""From a YAML config to a trained, evaluated and exported student: the code behind the CLI.

``hf-freqkd train-teacher`` and ``hf-freqkd distill`` both end here; so do
``accelerate launch scripts/train_teacher.py`` and ``scripts/distill.py``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DataArguments, DistillationConfig, ModelArguments, config_to_dict, parse_config
from .data.loading import generated_class_names, load_image_dataset, pick_split, seeded_subset
from .data.streaming import check_streaming_arguments, with_streamed_image_transform
from .errors import BadInputError, ConfigError, DataError, HubUploadError, MethodOptionsError
from .output_dir import RUN_RECORD  # noqa: F401  (re-exported: where a run's record lives)
from .output_dir import check_output_dir, check_output_path, removed_if_left_empty, training_settings
from .models.loading import load_model, resolve_input_config
from .push import push_folder
from .tasks import get_task
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
    mode: str,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
    check_output: bool = True,
) -> tuple[DistillationTrainer, DistillationConfig, ModelArguments, DataArguments]:
    """Parse and validate everything, load data and models, and build the trainer. Writes nothing.

    ``check_output=False`` skips the check that ``output_dir`` can take the run (for commands that
    write elsewhere: ``cache-teacher``).
    """
    if mode not in ("teacher", "distill"):
        raise ConfigError(f"mode '{mode}' is invalid: expected 'teacher' or 'distill'")
    base = {"methods": {"ce": {}}} if mode == "teacher" else {}
    args, model_args, data_args = parse_config(config_path, overrides, defaults={**base, **(defaults or {})})
    check_streaming_arguments(args, data_args)
    if mode == "teacher":
        extra = [name for name in args.methods if name != "ce"]
        if extra:
            raise MethodOptionsError(f"train-teacher trains with the ce method alone; remove {', '.join(extra)} from methods")
    if check_output:
        check_output_dir(args.output_dir, args.resume_from_checkpoint, training_settings(args, model_args, data_args))
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
        raise ConfigError(
            f"eval_strategy is '{getattr(args.eval_strategy, 'value', args.eval_strategy)}' but the dataset has no evaluation split (splits: {', '.join(data.splits)}); "
            "set validation_fraction to hold out part of the train split, eval_split, or eval_strategy: 'no'"
        )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, task=get_task(data_args.task),
        class_names=data.class_names,
    )
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
    transform: Any  # the task's transform (hf_freqkd.tasks: TaskData.transform)
    #: names given in the config, else the generated set's where its labels carry none; None lets the
    #: trainer read them from the data (hf_freqkd.class_names)
    class_names: list[str] | None = None
    #: train and eval are ``datasets.IterableDataset`` streams (hf_freqkd.data.streaming)
    streaming: bool = False

    def formatted(self, input_config: dict[str, Any], augmentation: str):
        """(train dataset, eval dataset or None) yielding ``pixel_values`` and ``labels``."""
        if self.streaming:
            columns = (self.image_column, self.label_column)
            train = with_streamed_image_transform(self.train, *columns, input_config, True, augmentation, self.num_classes)
            evaluation = None
            if self.eval is not None:
                evaluation = with_streamed_image_transform(self.eval, *columns, input_config, False, "none", self.num_classes)
            return train, evaluation
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
    data = load_image_dataset(data_args.dataset, data_args.dataset_config_name, args.trust_remote_code, streaming=data_args.streaming)
    splits = list(data)
    train_split = pick_split(splits, data_args.train_split, "train", ["train"])
    eval_split = pick_split(splits, data_args.eval_split, "eval", ["validation", "valid", "val", "test"])
    train_data = data[train_split]
    if data_args.streaming:
        return _streamed_run_data(data, train_split, eval_split, model_args, data_args, splits)
    if len(train_data) == 0:
        raise DataError(f"the train split '{train_split}' of dataset '{data_args.dataset}' is empty; point dataset at data with images")
    task_data = get_task(data_args.task).data_functions(train_data, data_args, model_args.num_classes)
    image_column, label_column, num_classes = task_data.image_column, task_data.label_column, task_data.num_classes
    transform, check_labels = task_data.transform, task_data.check_labels
    eval_data = data[eval_split] if eval_split else None
    if data_args.validation_fraction:
        if data_args.eval_split is not None:
            raise ConfigError(
                f"validation_fraction = {data_args.validation_fraction} holds out part of the train split '{train_split}' for evaluation, "
                f"but eval_split = '{data_args.eval_split}' names another evaluation split; unset one of them"
            )
        if eval_data is not None:
            # Choices (weights, schedules) are made on data carved from train, never on the test split.
            logger.warning(
                "evaluating on %s of '%s' held out (validation_fraction); the dataset's '%s' split is not used",
                data_args.validation_fraction, train_split, eval_split,
            )
        held_out = train_data.train_test_split(
            test_size=data_args.validation_fraction, seed=args.seed, stratify_by_column=label_column if _is_class_label(train_data, label_column) else None
        )
        train_data, eval_data, eval_split = held_out["train"], held_out["test"], f"{train_split} (held out)"
    subset_seed = args.data_seed if args.data_seed is not None else args.seed
    train_data = seeded_subset(train_data, data_args.max_train_samples, subset_seed, label_column)
    if eval_data is not None:
        eval_data = seeded_subset(eval_data, data_args.max_eval_samples, subset_seed, label_column)
    check_labels(train_data, label_column, num_classes, train_split)
    if eval_data is not None:
        check_labels(eval_data, label_column, num_classes, eval_split)
    class_names = data_args.class_names or generated_class_names(data_args.dataset, data_args.dataset_config_name)
    return RunData(train_data, eval_data, image_column, label_column, num_classes, splits, transform, class_names)


def _streamed_run_data(data, train_split: str, eval_split: str | None, model_args: ModelArguments, data_args: DataArguments, splits: list[str]) -> RunData:
    """RunData of streamed splits: columns and classes from the declared features; labels are checked as rows
    arrive; ``max_eval_samples`` keeps the first N evaluation rows (``take``), not a seeded draw."""
    import datasets

    from .data.loading import detect_columns

    train_data, eval_data = data[train_split], data[eval_split] if eval_split else None
    _, label_column = detect_columns(train_data, data_args.image_column, data_args.label_column)
    if not model_args.num_classes and not isinstance((train_data.features or {}).get(label_column), datasets.ClassLabel):
        raise ConfigError(
            f"streaming: the label column '{label_column}' declares no ClassLabel, and a stream cannot be read ahead "
            "to count its classes; set num_classes"
        )
    task_data = get_task(data_args.task).data_functions(train_data, data_args, model_args.num_classes)
    if eval_data is not None and data_args.max_eval_samples:
        eval_data = eval_data.take(data_args.max_eval_samples)
    return RunData(
        train_data, eval_data, task_data.image_column, task_data.label_column, task_data.num_classes, splits,
        task_data.transform, data_args.class_names, streaming=True,
    )


def input_config_for(model, data_args: DataArguments) -> dict[str, Any]:
    """The model's input size and normalisation (timm pretrained_cfg), with ``image_size`` applied."""
    input_config = resolve_input_config(model)
    if data_args.image_size:
        input_config["input_size"] = (input_config["input_size"][0], data_args.image_size, data_args.image_size)
    return input_config


def _is_class_label(dataset, column: str) -> bool:
    import datasets

    return isinstance(dataset.features[column], datasets.ClassLabel)


def run_cache_teacher(config_path: str | None = None, overrides: list[str] | None = None):
    """Build the teacher cache a distill config names (``teacher_cache``), without training: the
    same data, transform, seed and epochs the run will draw (:mod:`hf_freqkd.teacher_cache`).
    Returns the opened :class:`~hf_freqkd.teacher_cache.TeacherCache` (reused when already built)."""
    args, _, _ = parse_config(config_path, overrides)
    if not args.teacher_cache:
        raise ConfigError("cache-teacher writes the folder named by teacher_cache: set teacher_cache in the config, or add teacher_cache=<folder>")
    check_output_path(args.teacher_cache, "teacher_cache")
    # The run's output_dir is the distill run's, made by the Trainer when built: nothing of this command goes there.
    with removed_if_left_empty(args.output_dir):
        trainer, *_ = prepare_run("distill", config_path, overrides, check_output=False)
        return trainer.build_teacher_cache()


def run(mode: str, config_path: str | None = None, overrides: list[str] | None = None, defaults: dict[str, Any] | None = None) -> RunResult:
    """Train (a teacher, or a student by distillation), evaluate, export the student, record the run.

    The trainer writes the run record and the exported student (:meth:`DistillationTrainer.train`,
    :meth:`~DistillationTrainer.save_student`), as it does for a Trainer-API run; here the record
    holds the whole YAML config and the student is exported again with the final evaluation.
    """
    trainer, args, model_args, data_args = prepare_run(mode, config_path, overrides, defaults)
    trainer.run_record.update(
        mode=mode,
        config=config_to_dict(args, model_args, data_args),
        settings=training_settings(args, model_args, data_args),
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    # The final evaluation goes on the card; a non-finite student or evaluation fails here, exporting nothing.
    folder = trainer.save_student(metrics)
    export_dir = str(folder) if trainer.is_world_process_zero() else None
    hub_url = None
    hub = trainer.hub_settings
    if export_dir is not None and hub.push_to_hub:
        # The exported student alone, once; the Trainer's own push is off (see hf_freqkd.push).
        try:
            hub_url = push_folder(
                export_dir, hub.repo_id, token=hub.token, private=hub.private, revision=hub.revision,
                commit_message=f"Upload {mode} run {Path(args.output_dir).name} with hf_freqkd",
            )
        except (BadInputError, HubUploadError) as error:
            # The run is done and on disk: say what is kept and how to upload it without training again.
            checkpoints = sorted((p.name for p in Path(args.output_dir).glob("checkpoint-*")), key=lambda n: (len(n), n))
            kept = f"the exported student in {export_dir}, the run record{''.join(', ' + name for name in checkpoints)}"
            raise HubUploadError(
                f"training finished, but {error}; kept: {kept}. "
                f"To push again: hf-freqkd push --run {args.output_dir} --repo-id {hub.repo_id}"
            ) from None
    return RunResult(
        metrics=metrics,
        student_parameters=sum(p.numel() for p in trainer.student.parameters()),
        method_parameters=trainer.accelerator.unwrap_model(trainer.model).trainable_method_parameters(),
        teacher_parameters=sum(p.numel() for p in trainer.teacher.parameters()) if trainer.teacher is not None else 0,
        train_seconds=train_seconds,
        export_dir=export_dir,
        hub_url=hub_url,
    )

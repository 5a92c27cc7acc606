"""The model card (README.md) of an exported student, built from the run record with huggingface_hub.

The metadata block is ``huggingface_hub.ModelCardData``: ``library_name`` (timm or transformers),
tags, ``base_model`` (the teacher, when it is a Hub id), datasets, and the final evaluation as
``model-index`` eval results, which ``ModelCard.load(path).data.eval_results`` reads back. The
body states the teacher, the methods with every option (defaults filled in), the dataset and the
training recipe. What differs between tasks (pipeline tag, title, metric names, how to load the
model) is asked of the run's task (:mod:`hf_freqkd.tasks`).

A card is written to be published, so it holds no secret and no local filesystem path: only
whitelisted fields of the run reach it (never a token); a model given as a local folder is named
by its architecture (read from the folder's ``config.json``), and only a Hub id becomes
``base_model``; a dataset given as a local folder or file is named by its last path component;
a generated set (``digits``, ...) is never a Hub dataset id.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .errors import ConfigError
from .tasks import get_task

def hub_model_id(source: str | None) -> str | None:
    """The Hub id of a model source (``hf-hub:ORG/NAME`` or ``ORG/NAME``), or None for names, folders, files."""
    if not source:
        return None
    for prefix in ("timm:", "transformers:", "hf-hub:"):
        if source.startswith(prefix):
            source = source[len(prefix) :]
    source = source.split("@")[0]  # hf-hub:ORG/NAME@revision
    if os.path.exists(source) or source.startswith((".", "/", "~")) or source.count("/") != 1:
        return None
    return source


#: how a card names a local model whose architecture cannot be read
UNKNOWN_LOCAL_MODEL = "a local model"


def _is_local_path(source: str) -> bool:
    """True for a file or folder on this machine, or a string only a path can be (``./x``, ``a/b/c``)."""
    return os.path.exists(os.path.expanduser(source)) or source.startswith((".", "/", "~")) or source.count("/") > 1


def public_model_name(source: str | None) -> str | None:
    """How a card names a model: a Hub id or timm name as given; a local folder by its architecture.

    The architecture of a local folder is read from its ``config.json`` (timm's ``architecture``,
    transformers' ``architectures`` or ``model_type``); "a local model" when it cannot be read.
    """
    if not source:
        return None
    location = source.split(":", 1)[1] if source.startswith(("timm:", "transformers:")) else source
    if location.startswith("hf-hub:") or not _is_local_path(location):
        return source
    config_file = Path(location).expanduser() / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return UNKNOWN_LOCAL_MODEL
    architectures = config.get("architectures") or []
    name = config.get("architecture") or (architectures[0] if architectures else None) or config.get("model_type")
    return str(name) if name else UNKNOWN_LOCAL_MODEL


def _quoted(name: str | None) -> str:
    """A model or dataset name as code, a description ("a local model") as words."""
    if not name:
        return "an unnamed model"  # a record written by hand without the model's name
    return name if name.startswith(("a ", "an ")) else f"`{name}`"


@dataclasses.dataclass
class _DatasetNames:
    """How a card names a dataset: ``name`` in the text and the eval results, ``hub_id`` for metadata."""

    name: str
    hub_id: str | None
    description: str | None  # what the set is, when it is not a Hub dataset


def _dataset_names(dataset: str | None, config_name: str | None = None) -> _DatasetNames:
    from .data.loading import GENERATED_DATASETS

    if not dataset:
        return _DatasetNames("unknown", None, None)
    if dataset in GENERATED_DATASETS:
        arguments = f'"{dataset}"' + (f', "{config_name}"' if config_name else "")
        return _DatasetNames(
            dataset,
            None,
            f"a set hf_freqkd generates offline, not a Hub dataset: `hf_freqkd.data.load_image_dataset({arguments})`",
        )
    if _is_local_path(dataset) or dataset.endswith(".parquet"):
        kind = "a local .parquet file" if dataset.endswith(".parquet") else "a local image folder"
        return _DatasetNames(Path(dataset).name or kind, None, kind)
    return _DatasetNames(dataset, dataset, None)


def _resolved_methods(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every method with all its options, defaults filled in; the raw specs if a method is unknown here."""
    from .methods.registry import build_methods

    try:
        return {method.name: dataclasses.asdict(method.options) for method in build_methods(methods)}
    except (ValueError, TypeError):
        return dict(methods)


def _eval_results(
    metrics: dict[str, Any], dataset: str, config_name: str | None, split: str | None, task
) -> list[EvalResult]:
    results = []
    for key, (metric_type, metric_name) in task.card_metric_names(metrics).items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not _undefined(value, task):
            results.append(
                EvalResult(
                    task_type=task.pipeline_tag,
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_config=config_name,
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(value), 4),
                )
            )
    return results


def _undefined(value: Any, task) -> bool:
    """True for the value the task's metrics take where they are undefined (COCO's -1 AP of an empty size group)."""
    return task.undefined_metric_value is not None and value == task.undefined_metric_value


def _is_timm_name(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _distilled(record: dict[str, Any]) -> bool:
    """True when a teacher taught the student: a distill run whose methods read a teacher.

    ``hf-freqkd distill`` with ``methods: {ce: {}}`` (the student-alone row of a benchmark) has no teacher.
    """
    if "distilled" in record:
        return bool(record["distilled"])
    config = record.get("config", {})
    return record.get("mode", "distill") == "distill" and bool(config.get("teacher_model")) and any(
        name != "ce" for name in config.get("methods") or {}
    )


def build_model_card(record: dict[str, Any], library_name: str, model_name: str | None = None) -> ModelCard:
    """The card of a student from a run record (``hf_freqkd_run.json``) and its library (timm/transformers)."""
    if library_name not in ("timm", "transformers"):
        raise ConfigError(f"library_name = {library_name!r} is invalid: expected 'timm' or 'transformers'")
    config = record.get("config", {})
    training = record.get("training", {})
    metrics = record.get("metrics", {}) or {}
    distilled = _distilled(record)
    task = get_task(config.get("task") or "classification")
    student = public_model_name(config.get("student_model")) or "student"
    teacher_source = config.get("teacher_model") if distilled else None
    dataset = _dataset_names(config.get("dataset"), config.get("dataset_config_name"))
    methods = _resolved_methods(config.get("methods") or {})
    if not distilled:
        methods = {name: options for name, options in methods.items() if name == "ce"}
    model_name = model_name or f"{Path(student).name}-{'-'.join(n for n in methods if n != 'ce') or 'ce'}"

    tags = ["hf_freqkd", task.pipeline_tag]
    if distilled:
        tags.append("knowledge-distillation")
    tags += [name for name in methods if name != "ce"]
    if library_name == "timm":
        tags.append("timm")
    data = ModelCardData(
        library_name=library_name,
        pipeline_tag=task.pipeline_tag,
        tags=tags,
        base_model=hub_model_id(teacher_source),
        datasets=[dataset.hub_id] if dataset.hub_id else None,
        model_name=model_name,
        eval_results=_eval_results(metrics, dataset.name, config.get("dataset_config_name"), config.get("eval_split"), task)
        or None,
    )
    lines = [f"# {model_name}", "", _summary(record, task, student, teacher_source, dataset, methods, distilled), ""]
    lines += _history(record)
    lines += _classes_section(record.get("class_names"))
    lines += _usage_section(library_name, task, student)
    lines += _training_section(record, task, student, teacher_source, dataset, methods, training, distilled)
    lines += _evaluation_section(metrics, task)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines))


def _teacher_phrase(source: str | None) -> str:
    """How the card names the teacher: its Hub id (linked), a timm name, or a local model by architecture."""
    repo_id = hub_model_id(source)
    if repo_id:
        return f"the teacher [`{repo_id}`](https://huggingface.co/{repo_id})"
    if not source:
        return "a teacher"  # a record written by hand without the teacher's name
    location = source.split(":", 1)[1] if source.startswith(("timm:", "transformers:")) else source
    if _is_local_path(location):
        architecture = public_model_name(source)
        known = "" if architecture == UNKNOWN_LOCAL_MODEL else f" of architecture `{architecture}`"
        return f"a local teacher{known} (not published)"
    return f"the teacher `{source}`"


def _summary(record, task, student, teacher_source, dataset, methods, distilled) -> str:
    if distilled:
        method_names = ", ".join(n for n in methods if n != "ce")
        sentence = (
            f"{task.card_title} {_quoted(student)} distilled with {method_names} from {_teacher_phrase(teacher_source)} "
            f"on {_quoted(dataset.name)}, trained with hf_freqkd on the Hugging Face `Trainer`."
        )
        if record.get("config", {}).get("teacher_cache"):
            sentence += (
                " The teacher's outputs were read from a cache built before training, holding its outputs for exactly "
                "the augmented images each epoch drew: the same values running the teacher gives."
            )
        return sentence
    role = " (an hf_freqkd `train-teacher` run: a teacher for distillation)" if record.get("mode") == "teacher" else ""
    return (
        f"{task.card_title} {_quoted(student)} trained alone, with {task.label_loss} on the labels and no teacher, "
        f"on {_quoted(dataset.name)}{role}."
    )


def _history(record) -> list[str]:
    """What happened to the run beyond a straight training: a resume, an export from a checkpoint."""
    lines = []
    if record.get("resumed_from"):
        lines.append(
            f"Training was interrupted and resumed from `{record['resumed_from']}`; hf_freqkd resumes exactly "
            "(weights, optimiser, schedule, data order and augmentation), so the weights are those of an uninterrupted run."
        )
    if record.get("checkpoint"):
        lines.append(
            f"These weights are the Trainer checkpoint `{record['checkpoint']}`, exported after the run, not the end of "
            "training; the evaluation below is the last one logged up to it."
        )
    return [*lines, ""] if lines else []


#: classes a card lists by name before it says how many more there are
CARD_CLASSES_SHOWN = 100


def _classes_section(class_names: list[str] | None) -> list[str]:
    if not class_names:
        return []
    shown = ", ".join(f"`{index}` {name}" for index, name in enumerate(class_names[:CARD_CLASSES_SHOWN]))
    more = f", ... ({len(class_names) - CARD_CLASSES_SHOWN} more)" if len(class_names) > CARD_CLASSES_SHOWN else ""
    return [
        "## Classes",
        "",
        f"{len(class_names)} classes, by class id: {shown}{more}. `config.json` holds them all (timm's `label_names`, "
        "transformers' `id2label`), so pipelines answer with these names.",
        "",
    ]


def _usage_section(library_name: str, task, student: str) -> list[str]:
    """The lines that load the model and run the task's pipeline, for the way this export loads."""
    from .remote_code import MODELING_FILE, is_registered_by_hf_freqkd

    repo = '"<repo id or path>"'
    remote = library_name == "timm" and task.remote_code_classes is not None and is_registered_by_hf_freqkd(student)
    transformers_loads = library_name == "transformers" or remote or task.transformers_loads_timm_exports
    trust = ", trust_remote_code=True" if remote else ""
    # timm exports' image processor exists for PIL only; asking for it saves transformers' fallback message
    pil_backend = ', backend="pil"' if library_name == "timm" else ""
    lines = ["## How to use", ""]
    if transformers_loads:
        auto_class = task.remote_code_classes[0] if remote else (task.transformers_auto_class or "AutoModel")
        lines += [
            "```python",
            "from transformers import pipeline",
            "",
            f"predict = pipeline(\"{task.pipeline_tag}\", model={repo}{trust})",
            f"predict(\"image.jpg\")  # {task.pipeline_output}",
            *(["# transformers may log \"Requested torchvision backend is not available. Falling back to pil backend.\": this",
               "# model's image processor (timm's evaluation transform) is PIL-based; nothing is missing"] if library_name == "timm" else []),
            "```",
            "",
            "The network and its image processor (the resize and normalisation it was evaluated with):",
            "",
            "```python",
            f"from transformers import AutoImageProcessor, {auto_class}",
            "",
            f"processor = AutoImageProcessor.from_pretrained({repo}{trust}{pil_backend})",
            f"model = {auto_class}.from_pretrained({repo}{trust}).eval()",
            "outputs = model(**processor(image, return_tensors=\"pt\"))  # image: a PIL image",
            "```",
            "",
        ]
    if remote:
        lines += [
            f"`{student}` is a network hf_freqkd registers in timm. This repository carries its code "
            f"(`{MODELING_FILE}` and hf_freqkd's network files, which import only torch, timm and torchvision), so "
            "transformers builds it without hf_freqkd; `trust_remote_code=True` lets it run that code: read it first. "
            "With hf_freqkd installed, timm loads it too:",
            "",
        ]
    if library_name == "timm":
        lines += ["```python", "import timm"]
        if remote:
            lines.append(f"import hf_freqkd  # registers {student} in timm")
        elif not _is_timm_name(student):
            lines.append("import hf_freqkd  # only needed for the architectures it registers (CIFAR zoo, segfpn_*, detectors)")
        lines += [
            "",
            'model = timm.create_model("hf-hub:<repo id>", pretrained=True).eval()',
            '# or, from this folder: timm.create_model("local-dir:<path>", pretrained=True)',
        ]
        if task.card_usage:
            lines += ["", *task.card_usage.splitlines()]
        lines += ["```", ""]
    return lines


def _training_section(record, task, student, teacher_source, dataset, methods, training, distilled) -> list[str]:
    config = record.get("config", {})
    lines = ["## Training", ""]
    if distilled:
        # A checkpoint is a local file: its name says which one, its folder is nobody else's business.
        checkpoint = config.get("teacher_checkpoint")
        teacher = public_model_name(teacher_source)
        local = teacher_source and _is_local_path(str(teacher_source).split(":", 1)[-1]) and teacher != UNKNOWN_LOCAL_MODEL
        local = " (a local model)" if local else ""
        lines.append(
            f"- Teacher: {_quoted(teacher)}{local}" + (f" (weights: `{Path(str(checkpoint)).name}`)" if checkpoint else "")
        )
        if config.get("teacher_cache"):
            lines.append("- Teacher outputs: read from a teacher cache (`teacher_cache`), exact")
    else:
        lines.append("- Teacher: none (trained alone)")
    lines.append(f"- Student: {_quoted(student)}")
    lines.append(
        f"- Dataset: {_quoted(dataset.name)}"
        + (f" (config `{config['dataset_config_name']}`)" if config.get("dataset_config_name") else "")
        + (f": {dataset.description}" if dataset.description else "")
    )
    if config.get("image_size"):
        lines.append(f"- Input size: {config['image_size']} px")
    for key, label in (
        ("distill_warmup_steps", "Distillation warm-up (steps)"),
        ("distill_warmup_epochs", "Distillation warm-up (epochs)"),
    ):
        if distilled and config.get(key):
            lines.append(f"- {label}: {config[key]}")
    lines += ["", f"Methods and options (`ce` is the ground-truth term: {task.label_loss}):", "", "```yaml"]
    lines.append(yaml.safe_dump(methods, sort_keys=False, default_flow_style=False).rstrip())
    lines += ["```", ""]
    if training:
        lines += ["| Recipe | Value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in training.items() if value not in (None, "")]
        lines.append("")
    clipping = record.get("gradient_clipping") or {}
    if clipping.get("max_grad_norm", 0) > 0 and clipping.get("steps"):
        lines += [
            f"Gradient clipping at a norm of {clipping['max_grad_norm']:g} acted on {clipping['clipped_steps']} of "
            f"{clipping['steps']} optimizer steps ({100 * clipping['fraction']:.0f} %).",
            "",
        ]
    return lines


def _evaluation_section(metrics, task) -> list[str]:
    if not metrics:
        return []
    shown = {key: value for key, value in metrics.items() if not key.endswith(("_runtime", "_per_second")) and key != "epoch"}
    undefined = {key for key, value in shown.items() if key != "eval_loss" and _undefined(value, task)}
    lines = ["## Evaluation", "", "| Metric | Value |", "|---|---|"]
    for key, value in shown.items():
        lines.append(f"| {key} | {'undefined' if key in undefined else round(value, 4) if isinstance(value, float) else value} |")
    if undefined:
        lines += [
            "",
            f"undefined: the metric has no value on this evaluation set (computed as {task.undefined_metric_value:g}, "
            "e.g. the AP of an object size no evaluation image holds); the metadata leaves it out.",
        ]
    lines.append("")
    return lines


def write_model_card(
    folder: str | Path, record: dict[str, Any], library_name: str, model_name: str | None = None
) -> Path:
    """Write ``README.md`` (the model card) into ``folder`` and return its path."""
    path = Path(folder) / "README.md"
    build_model_card(record, library_name, model_name).save(str(path))
    return path


def training_recipe(args: Any) -> dict[str, Any]:
    """The recipe fields of ``TrainingArguments`` a card reports (a whitelist: nothing secret)."""

    def plain(value: Any) -> Any:
        return getattr(value, "value", value)  # enums (optim, lr_scheduler_type) as their names

    world_size = getattr(args, "world_size", 1)
    recipe = {
        "epochs": args.num_train_epochs if args.max_steps is None or args.max_steps <= 0 else None,
        "max_steps": args.max_steps if args.max_steps and args.max_steps > 0 else None,
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "processes": world_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "total_batch_size": args.per_device_train_batch_size * world_size * args.gradient_accumulation_steps,
        "optimizer": plain(args.optim),
        "optimizer_args": args.optim_args,
        "weight_decay": args.weight_decay,
        "weight_decay_on": getattr(args, "weight_decay_on", None),
        "max_grad_norm": args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else "0 (no clipping)",
        "lr_scheduler": "step decay at epochs "
        + ", ".join(f"{e:g}" for e in args.lr_decay_epochs)
        + f" (x{args.lr_decay_rate:g})"
        if getattr(args, "lr_decay_epochs", None)
        else plain(args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps or None,
        "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else None,
        "seed": args.seed,
    }
    return {key: value for key, value in recipe.items() if value is not None}


def record_from_trainer(trainer: Any) -> dict[str, Any]:
    """A run record for a trainer used directly (no ``hf_freqkd_run.json``): config, recipe, last evaluation."""
    from .config import config_to_dict

    config = config_to_dict(trainer.args)
    config.setdefault("student_model", type(trainer.student).__name__)
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    metrics = {k: v for k, v in (evaluations[-1] if evaluations else {}).items() if k.startswith("eval_")}
    return {
        "mode": "distill" if trainer.teacher is not None else "teacher",
        "config": config,
        "training": training_recipe(trainer.args),
        "metrics": metrics,
    }

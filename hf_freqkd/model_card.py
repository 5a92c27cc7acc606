"""The model card (README.md) of an exported student, built from the run record with huggingface_hub.

The metadata block is ``huggingface_hub.ModelCardData``: ``library_name`` (timm or transformers),
tags, ``base_model`` (the teacher, when it is a Hub id), datasets, and the final evaluation as
``model-index`` eval results, which ``ModelCard.load(path).data.eval_results`` reads back. The
body states the teacher, the methods with every option (defaults filled in), the dataset and the
training recipe. Only whitelisted, non-secret fields of the run reach the card: never a token.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

# hf_freqkd's task (DataArguments.task) -> the Hub's pipeline tag and model-index task type.
PIPELINE_TAGS = {"classification": "image-classification", "segmentation": "image-segmentation"}

# Evaluation metrics reported by the Trainer (eval_ prefix) -> (model-index metric type, readable name).
_METRICS = {
    "eval_accuracy": ("accuracy", "Top-1 accuracy"),
    "eval_mean_iou": ("mean_iou", "Mean IoU"),
    "eval_pixel_accuracy": ("pixel_accuracy", "Pixel accuracy"),
    "eval_mean_accuracy": ("mean_accuracy", "Mean class accuracy"),
}


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


def _hub_dataset_id(dataset: str | None) -> str | None:
    if not dataset or dataset == "digits" or os.path.exists(dataset) or dataset.endswith(".parquet"):
        return None
    return dataset if dataset.count("/") <= 1 else None


def _resolved_methods(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every method with all its options, defaults filled in; the raw specs if a method is unknown here."""
    from .methods.registry import build_methods

    try:
        return {method.name: dataclasses.asdict(method.options) for method in build_methods(methods)}
    except (ValueError, TypeError):
        return dict(methods)


def _eval_results(
    metrics: dict[str, Any], dataset: str, config_name: str | None, split: str | None, task: str
) -> list[EvalResult]:
    results = []
    names = dict(_METRICS)
    for key in metrics:
        if key.startswith("eval_top") and key.endswith("_accuracy"):
            k = key[len("eval_top") : -len("_accuracy")]
            names[key] = (f"top_{k}_accuracy", f"Top-{k} accuracy")
    for key, (metric_type, metric_name) in names.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            results.append(
                EvalResult(
                    task_type=task,
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


def build_model_card(record: dict[str, Any], library_name: str, model_name: str | None = None) -> ModelCard:
    """The card of a student from a run record (``hf_freqkd_run.json``) and its library (timm/transformers)."""
    if library_name not in ("timm", "transformers"):
        raise ValueError(f"library_name = {library_name!r} is invalid: expected 'timm' or 'transformers'")
    config = record.get("config", {})
    training = record.get("training", {})
    metrics = record.get("metrics", {}) or {}
    mode = record.get("mode", "distill")
    student = config.get("student_model") or "student"
    teacher = config.get("teacher_model") if mode == "distill" else None
    dataset = config.get("dataset") or "unknown"
    methods = _resolved_methods(config.get("methods") or {})
    if mode == "teacher":
        methods = {name: options for name, options in methods.items() if name == "ce"}
    task = PIPELINE_TAGS.get(config.get("task") or "classification", "image-classification")
    model_name = model_name or f"{Path(str(student)).name}-{'-'.join(n for n in methods if n != 'ce') or 'ce'}"

    tags = ["hf_freqkd", task]
    if mode == "distill":
        tags.append("knowledge-distillation")
    tags += [name for name in methods if name != "ce"]
    if library_name == "timm":
        tags.append("timm")
    dataset_id = _hub_dataset_id(dataset)
    data = ModelCardData(
        library_name=library_name,
        pipeline_tag=task,
        tags=tags,
        base_model=hub_model_id(teacher),
        datasets=[dataset_id] if dataset_id else None,
        model_name=model_name,
        eval_results=_eval_results(metrics, dataset, config.get("dataset_config_name"), config.get("eval_split"), task)
        or None,
    )
    body = _card_body(record, library_name, model_name, student, teacher, dataset, methods, training, metrics)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _card_body(record, library_name, model_name, student, teacher, dataset, methods, training, metrics) -> str:
    mode = record.get("mode", "distill")
    config = record.get("config", {})
    lines = [f"# {model_name}", ""]
    kind = "Segmentation network" if config.get("task") == "segmentation" else "Image classifier"
    if mode == "distill":
        method_names = ", ".join(n for n in methods if n != "ce") or "ce"
        lines.append(
            f"{kind} `{student}` distilled from the teacher `{teacher}` with {method_names} "
            f"on `{dataset}`, trained with hf_freqkd on the Hugging Face `Trainer`."
        )
    else:
        lines.append(
            f"{kind} `{student}` trained with cross-entropy on `{dataset}` (an hf_freqkd teacher run)."
        )
    lines += ["", "## Use", "", "```python"]
    if library_name == "timm":
        lines += [
            "import timm",
            "import hf_freqkd  # only needed for the CIFAR-zoo architectures (resnet8, wrn_40_2, ...)",
            "",
            'model = timm.create_model("hf-hub:<repo id>", pretrained=True).eval()',
            '# or, from this folder: timm.create_model("local-dir:<path>", pretrained=True)',
        ]
    else:
        lines += [
            "from transformers import AutoModelForImageClassification",
            "",
            'model = AutoModelForImageClassification.from_pretrained("<repo id or path>").eval()',
        ]
    lines += ["```", "", "## Training", ""]
    if mode == "distill":
        lines.append(
            f"- Teacher: `{teacher}`"
            + (f" (weights: `{config['teacher_checkpoint']}`)" if config.get("teacher_checkpoint") else "")
        )
    lines.append(f"- Student: `{student}`")
    lines.append(
        f"- Dataset: `{dataset}`"
        + (f" (config `{config['dataset_config_name']}`)" if config.get("dataset_config_name") else "")
    )
    if config.get("image_size"):
        lines.append(f"- Input size: {config['image_size']} px")
    for key, label in (
        ("distill_warmup_steps", "Distillation warm-up (steps)"),
        ("distill_warmup_epochs", "Distillation warm-up (epochs)"),
    ):
        if config.get(key):
            lines.append(f"- {label}: {config[key]}")
    lines += ["", "Methods and options (`ce` is the ground-truth term):", "", "```yaml"]
    lines.append(yaml.safe_dump(methods, sort_keys=False, default_flow_style=False).rstrip())
    lines += ["```", ""]
    if training:
        lines += ["| Recipe | Value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in training.items() if value not in (None, "")]
        lines.append("")
    if metrics:
        lines += ["## Evaluation", "", "| Metric | Value |", "|---|---|"]
        lines += [
            f"| {key} | {round(value, 4) if isinstance(value, float) else value} |"
            for key, value in metrics.items()
            if not key.endswith(("_runtime", "_per_second")) and key != "epoch"
        ]
        lines.append("")
    return "\n".join(lines)


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

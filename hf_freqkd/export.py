"""Export the student alone, in its own library's format, so users load it without hf_freqkd's trainer.

timm students: ``timm.models.save_for_hf`` (config.json + model.safetensors), loadable with
``timm.create_model("local-dir:PATH", pretrained=True)`` and, for classifiers, with transformers'
``AutoModelForImageClassification.from_pretrained(PATH)`` (its TimmWrapper classes, which build the
architecture with timm): CIFAR-zoo students either way once ``hf_freqkd`` is imported, since it
registers them in timm. Segmentation networks and detectors (``segfpn_*``, ``retinanet_*``,
``fcos_*``, ``fasterrcnn_*``) are timm models of hf_freqkd's: ``import hf_freqkd`` then
``timm.create_model("local-dir:PATH", pretrained=True)`` (or ``hf_freqkd.models.load_model(PATH)``);
transformers has no auto class that builds them. A detector's ``config.json`` keeps the arguments it
was built with (``model_args``: score threshold, detections per image, ...), so the reloaded detector
gives the boxes of the run: ``model(pixel_values).detections``, ``(B, N, 6)`` rows x1, y1, x2, y2,
score, class. transformers students: ``save_pretrained``, loadable with
``AutoModelForImageClassification.from_pretrained(PATH)``. Teacher and method modules are never
part of an export. With a run record, the folder also gets its model card (README.md), whose usage
snippet is the task's (:attr:`hf_freqkd.tasks.Task.card_usage`).

An export is written to be published: it holds no local filesystem path (see
:mod:`hf_freqkd.model_card`); the run record stays in the run folder and is not copied.

``export_run`` does the same after the fact, from a run's output folder: from the student the run
exported, or from a Trainer checkpoint (a Distiller state dict: ``student.model.*`` keys are the
student, ``methods.*`` the method modules, which are dropped).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from .errors import ConfigError, MissingPathError, ModelError
from .models.loading import is_transformers_model

from .output_dir import RUN_RECORD, STUDENT_EXPORT_DIR  # noqa: F401  (re-exported)


def library_name(model: nn.Module) -> str:
    """'transformers' or 'timm': the library whose format the model is saved in."""
    return "transformers" if is_transformers_model(model) else "timm"


def export_student(
    student: nn.Module,
    output_dir: str | Path,
    record: dict[str, Any] | None = None,
    model_name: str | None = None,
) -> Path:
    """Write ``student`` to ``output_dir`` (and its model card when ``record`` is given); return the folder.

    The files are written to a temporary sibling folder first and moved in one by one, so a failed
    export never leaves a half-written model over a previous one.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"export folder '{output_dir}' exists and is not a folder")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    class_names = (record or {}).get("class_names")
    try:
        if is_transformers_model(student):
            if class_names:
                _name_transformers_classes(student, class_names)
            student.save_pretrained(staging)
        else:
            from timm.models import save_for_hf

            save_for_hf(
                student,
                str(staging),
                model_config={"label_names": list(class_names)} if class_names else None,
                model_args=_architecture_args(getattr(student, "hf_freqkd_model_args", None)),
                data_config=_data_config(record),
                safe_serialization=True,
            )
            _make_loadable_by_transformers(staging / "config.json", student, class_names)
        if record is not None:
            from .model_card import write_model_card

            write_model_card(staging, record, library_name(student), model_name)
        output_dir.mkdir(exist_ok=True)
        for file in staging.iterdir():
            os.replace(file, output_dir / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


#: timm.create_model arguments that say where weights and configs are loaded from, not what the
#: architecture is: an export has its own weights, and these may name local files.
_LOADING_ARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")


def _architecture_args(model_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments the student was created with that rebuild its architecture (timm's model_args)."""
    return {key: value for key, value in (model_kwargs or {}).items() if key not in _LOADING_ARGS}


def _make_loadable_by_transformers(config_file: Path, student: nn.Module, class_names: list[str] | None) -> None:
    """Complete timm's ``config.json`` so that transformers loads the export and its pipelines name the classes.

    * ``id2label`` / ``label2id`` beside timm's ``label_names``: both libraries' keys for the class names.
    * The class count is left to the root ``num_classes`` alone, where both loaders read it: timm records
      it in ``model_args`` too, and transformers' TimmWrapper passes its own ``num_classes=num_labels``
      next to ``**model_args`` ("got multiple values for keyword argument 'num_classes'").
    * A network only hf_freqkd registers carries its modeling code and names it in ``auto_map``
      (:mod:`hf_freqkd.remote_code`).
    * Segmentation networks and detectors: timm's "squash" crop mode, the resize to the input size
      their evaluation used, so that the image processor built from ``pretrained_cfg`` prepares images
      as hf_freqkd evaluated them.
    """
    from .remote_code import is_registered_by_hf_freqkd, write_remote_code
    from .tasks import task_for_model

    config = json.loads(config_file.read_text())
    model_args = config.get("model_args") or {}
    if "num_classes" in model_args:
        if model_args["num_classes"] != config.get("num_classes"):
            raise ModelError(
                f"the student's model_args say {model_args['num_classes']} classes but its config {config.get('num_classes')}"
            )
        del model_args["num_classes"]
        if model_args:
            config["model_args"] = model_args
        else:
            config.pop("model_args")
    if class_names:
        config["id2label"] = {str(index): name for index, name in enumerate(class_names)}
        config["label2id"] = {name: index for index, name in enumerate(class_names)}
    task = task_for_model(student)
    if task.squashes_images:
        config["pretrained_cfg"]["crop_mode"] = "squash"
    if task.remote_code_classes and is_registered_by_hf_freqkd(config.get("architecture")):
        config.update(write_remote_code(config_file.parent, task))
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def _name_transformers_classes(student: nn.Module, class_names: list[str]) -> None:
    """Set a transformers student's ``id2label`` / ``label2id`` (saved in its ``config.json``)."""
    model = student.model if getattr(student, "is_detection_model", False) else student  # a TransformersDetector
    model.config.id2label = dict(enumerate(class_names))
    model.config.label2id = {name: index for index, name in enumerate(class_names)}


def _data_config(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The input size the student was trained at, when the run set one (``image_size``)."""
    size = (record or {}).get("config", {}).get("image_size")
    return {"img_size": int(size)} if size else None


# ----------------------------------------------------------------------------------------------
# From a run folder


def read_run_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The run record (``hf_freqkd_run.json``) of ``run_dir``, or None if it has none."""
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"run record '{path}' is not valid JSON: {error}") from None


def export_run(run_dir: str | Path, checkpoint: str | None = None, to: str | Path | None = None) -> Path:
    """Export the student of a run to ``to`` with its model card; return the folder.

    Args:
        run_dir: the run's ``output_dir``.
        checkpoint: a Trainer checkpoint of the run (``checkpoint-N``, relative to ``run_dir``, or a
            path); by default the student the finished run exported (``run_dir/student``).
        to: destination; by default ``run_dir/student`` (or ``run_dir/student-checkpoint-N``).
    """
    from .models.loading import load_checkpoint, load_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingPathError(f"run folder '{run_dir}' does not exist")
    record = read_run_record(run_dir)
    checkpoints = sorted((p.name for p in run_dir.glob("checkpoint-*") if p.is_dir()), key=_checkpoint_step)
    if checkpoint is None:
        source = run_dir / STUDENT_EXPORT_DIR
        if not (source / "config.json").is_file():
            hint = (
                f"; export one of its Trainer checkpoints with --checkpoint ({', '.join(checkpoints[-3:])})"
                if checkpoints
                else "; is it an hf_freqkd output_dir?"
            )
            raise MissingPathError(
                f"run folder '{run_dir}' holds no exported student ({source}/config.json is missing){hint}"
            )
        student = load_model(str(source))
        destination = Path(to) if to is not None else source
    else:
        folder = Path(checkpoint) if Path(checkpoint).is_dir() else run_dir / checkpoint
        if not folder.is_dir():
            available = (
                f"; checkpoints in '{run_dir}': {', '.join(checkpoints)}"
                if checkpoints
                else f"; '{run_dir}' holds no checkpoints"
            )
            raise MissingPathError(f"checkpoint '{checkpoint}' does not exist{available}")
        if record is None or not record.get("config", {}).get("student_model"):
            raise ModelError(
                f"run folder '{run_dir}' has no {RUN_RECORD} naming the student, so the architecture of "
                f"'{folder.name}' is unknown; checkpoints can only be exported from a run started by hf_freqkd"
            )
        config = record["config"]
        student = load_model(
            config["student_model"],
            num_classes=record.get("num_classes") or config.get("num_classes"),
            model_kwargs=config.get("student_model_kwargs") or {},
            trust_remote_code=bool(config.get("trust_remote_code")),
        )
        load_checkpoint(student, str(folder))
        # The card reports what was measured at this checkpoint, not the finished run's metrics.
        record = {**record, "metrics": _checkpoint_metrics(folder), "checkpoint": folder.name}
        destination = Path(to) if to is not None else run_dir / f"{STUDENT_EXPORT_DIR}-{folder.name}"
    if destination.exists() and any(destination.iterdir()) and not (destination / "config.json").is_file():
        raise ConfigError(
            f"export folder '{destination}' already holds files that are not an exported model; "
            "choose a new or empty folder"
        )
    model_name = run_dir.resolve().name
    return export_student(student, destination, record or {"config": {}, "metrics": {}}, model_name=model_name)


def _checkpoint_metrics(folder: Path) -> dict[str, float]:
    """The last evaluation logged up to a checkpoint (its trainer_state.json), or nothing."""
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        return {}
    try:
        history = json.loads(state_file.read_text()).get("log_history", [])
    except json.JSONDecodeError:
        return {}
    evaluations = [entry for entry in history if any(key.startswith("eval_") for key in entry)]
    if not evaluations:
        return {}
    return {
        key: value
        for key, value in evaluations[-1].items()
        if key.startswith("eval_") and isinstance(value, (int, float))
    }


def _checkpoint_step(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1

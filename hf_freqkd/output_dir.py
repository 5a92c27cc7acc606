"""What a run may do with its ``output_dir``: never lose a user's run, never mislabel one.

Checked before any model, data or file is touched:

* a folder holding another run (its checkpoints, its exported student or its run record) is refused
  unless the run resumes from it: a finished run without checkpoints (``save_strategy: no``) is not
  overwritten silently;
* a resumed run must train exactly as the run it resumes: every training-relevant setting is
  compared with the one recorded in that run's ``hf_freqkd_run.json``, and a difference is refused,
  naming each key with its old and new value. Only where output goes, logging, evaluation, saving,
  the Hub and the devices may change, so the run record and model card always describe the weights
  they sit beside.

Every command checks the paths it will write the same way before writing anything
(:func:`check_output_path`): not a file where a folder goes, not below a file, writable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingPathError

RUN_RECORD = "hf_freqkd_run.json"
STUDENT_EXPORT_DIR = "student"

#: Settings a resumed run may change: they decide where results go and how they are reported, not
#: what the weights become. Exact names, then prefixes.
RESUMABLE_KEYS = {
    "output_dir", "resume_from_checkpoint", "run_name", "report_to", "disable_tqdm", "do_eval", "do_predict",
    "per_device_eval_batch_size", "prediction_loss_only", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "max_eval_samples", "use_cpu", "local_rank", "skip_memory_metrics", "debug",
    "overwrite_output_dir", "include_num_input_tokens_seen", "trust_remote_code", "teacher_torch_compile", "teacher_sharding",
}
RESUMABLE_PREFIXES = (
    "logging_", "log_", "eval_", "save_", "hub_", "push_to_hub", "dataloader_", "ddp_", "fsdp", "deepspeed",
    "tpu_", "torch_compile", "torchdynamo", "include_", "batch_eval_metrics", "average_tokens_across_devices",
    # the cache gives the online teacher's outputs of the same views (to its storage precision)
    "teacher_cache",
)


def is_resumable_key(key: str) -> bool:
    """True if ``key`` may differ between a run and its resumption."""
    return key in RESUMABLE_KEYS or key.startswith(RESUMABLE_PREFIXES)


def _plain(value: Any) -> Any:
    """A JSON round trip of ``value`` (enums as their names), so recorded and new settings compare equal."""
    return json.loads(json.dumps(getattr(value, "value", value), default=lambda v: getattr(v, "value", str(v))))


def training_settings(*configs: Any) -> dict[str, Any]:
    """Every training-relevant field of the given config dataclasses (``DistillationConfig``, model and
    data arguments), JSON-plain and sorted: what a resumed run must keep. Secrets never count (the Hub
    settings are resumable and left out)."""
    settings: dict[str, Any] = {}
    for config in configs:
        if config is None:
            continue
        for field in dataclasses.fields(config):
            if field.init and not is_resumable_key(field.name):
                settings[field.name] = _plain(getattr(config, field.name))
    return dict(sorted(settings.items()))


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The run record of ``run_dir``; None if there is none or it is unreadable (a killed write)."""
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def write_record(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Write the run record atomically: a crash leaves the previous record or the new one, never half."""
    path = Path(run_dir) / RUN_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{RUN_RECORD}.tmp")
    staged.write_text(json.dumps(record, indent=2, default=str))
    os.replace(staged, path)


def resolve_resume(value: Any) -> bool | str | None:
    """``resume_from_checkpoint`` as the Trainer takes it: True, a checkpoint path, or None."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    return value or None


def check_output_dir(output_dir: str | Path, resume: Any = None, settings: dict[str, Any] | None = None) -> None:
    """Refuse an ``output_dir`` that would lose or mislabel a run (see the module docstring).

    Args:
        output_dir: the run's ``output_dir``.
        resume: ``resume_from_checkpoint`` (True, "true", a checkpoint folder, or None / False).
        settings: the new run's :func:`training_settings`, compared with the recorded ones on resume.
    """
    output_dir = Path(output_dir)
    resume = resolve_resume(resume)
    if isinstance(resume, str) and not os.path.isdir(resume):
        raise MissingPathError(
            f"resume_from_checkpoint '{resume}' does not exist: give a checkpoint-<step> folder of an earlier run, "
            "or true to resume from the latest checkpoint in output_dir"
        )
    checkpoints = sorted(p.name for p in output_dir.glob("checkpoint-*")) if output_dir.is_dir() else []
    if resume is True and not checkpoints:
        raise ConfigError(
            f"resume_from_checkpoint is true but output_dir '{output_dir}' holds no checkpoint-* folder; "
            "unset resume_from_checkpoint to start a new run, or set output_dir to the run to continue"
        )
    check_output_path(output_dir, "output_dir")
    if resume:
        resumed_run = output_dir if resume is True else Path(resume).parent
        if settings is not None:
            check_resume_settings(resumed_run, settings)
    elif output_dir.is_dir():
        held = _run_outputs(output_dir, checkpoints)
        if held:
            hint = (
                "set resume_from_checkpoint=true to continue that run (same settings), or choose another output_dir"
                if checkpoints
                else "choose another output_dir, or delete that folder to train again from scratch"
            )
            raise ConfigError(f"output_dir '{output_dir}' already holds a run ({', '.join(held)}); {hint}")


def check_output_path(path: str | Path, what: str, *, folder: bool = True) -> None:
    """Refuse a path a command is about to write, before it writes anything: one that exists as the
    other kind (a file where a folder goes, a folder where a file goes), one below a file, or one
    that cannot be written (itself, or the nearest existing folder it would be created in).

    Args:
        path: the folder (or, with ``folder=False``, the file) the command writes.
        what: the setting that named it, for the message (``output_dir``, ``--output-dir``, ``teacher_cache``).
    """
    path = Path(path).expanduser()
    kind = "folder" if folder else "file"
    if path.exists():
        if path.is_dir() != folder:
            raise ConfigError(f"{what} '{path}' exists and is not a {kind}; choose a {kind} path")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{what} '{path}' is not writable; fix its permissions or choose another {what}")
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{what} '{path}' cannot be created: '{ancestor}' is a file, not a folder; choose another {what}")
    if not os.access(ancestor, os.W_OK):
        raise ConfigError(f"{what} '{path}' cannot be created: '{ancestor}' is not writable; fix its permissions or choose another {what}")


def held_run_outputs(folder: str | Path) -> list[str]:
    """What of a training run ``folder`` holds (checkpoints, an exported student), for a refusal; empty when none."""
    folder = Path(folder)
    checkpoints = sorted(p.name for p in folder.glob("checkpoint-*")) if folder.is_dir() else []
    return _run_outputs(folder, checkpoints)


@contextlib.contextmanager
def removed_if_left_empty(folder: str | Path):
    """Remove ``folder`` after the block when the block created it and left it empty: transformers'
    Trainer makes its ``output_dir`` when built, which a command writing elsewhere must not leave behind."""
    existed = os.path.exists(folder)
    try:
        yield
    finally:
        if not existed and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)


def _run_outputs(output_dir: Path, checkpoints: list[str]) -> list[str]:
    """What of an earlier run ``output_dir`` holds, for the refusal message."""
    held = list(checkpoints[:3])
    if (output_dir / STUDENT_EXPORT_DIR / "config.json").is_file():
        held.append(f"an exported student in {STUDENT_EXPORT_DIR}/")
    if not held:
        # A record alone (a run interrupted or failed before its first checkpoint) holds nothing to lose:
        # running the same command again starts over, as the interrupt message says.
        return held
    record = read_record(output_dir)
    if record is not None:
        held.append(f"{RUN_RECORD} of a {record.get('status', 'started')} run")
    return held


def check_resume_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    """A resumed run keeps every training-relevant setting of the run it continues."""
    record = read_record(run_dir)
    recorded = (record or {}).get("settings")
    if recorded is None:
        # A record from before settings were recorded, or none: nothing to compare against.
        return
    keys = sorted(set(recorded) | set(settings))
    changed = [key for key in keys if not is_resumable_key(key) and recorded.get(key) != settings.get(key)]
    if changed:
        differences = "; ".join(f"{key}: {recorded.get(key)!r} -> {settings.get(key)!r}" for key in changed)
        raise ConfigError(
            f"resume_from_checkpoint continues the run in '{run_dir}', whose weights were trained with other settings "
            f"({differences}); resume with the run's own settings, or start a new run in another output_dir "
            "(student_checkpoint=<checkpoint folder> starts from those weights)"
        )

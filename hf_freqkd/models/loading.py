"""Build a teacher or student from what a user names: a timm model, a local folder, a Hub id.

Sources, in the order they are tried:

* ``timm:NAME`` / ``transformers:ID``: force the library.
* a local directory: ``config.json`` with ``architecture`` is a timm folder (``save_for_hf``),
  with ``model_type`` a transformers folder (``save_pretrained``).
* ``hf-hub:ORG/NAME``: a timm model on the Hub.
* a name in timm's registry (the CIFAR zoo is registered there by ``import hf_freqkd``).
* a string that looks like a path (``runs/teacher`` next to a ``runs/`` folder, ``./teacher``,
  ``a/b/c``, see :mod:`hf_freqkd.sources`) but names nothing: a missing folder, reported with near names.
* anything else containing ``/``: a transformers ``AutoModelForImageClassification`` Hub id. Without
  network, or with ``HF_HUB_OFFLINE=1`` and no cached copy, that is one line, not minutes of retries.

Weights from ``checkpoint`` load after construction: a ``.safetensors`` file, a torch file (read
with ``weights_only=True``), or a Trainer checkpoint directory of hf_freqkd (``student.`` keys).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..sources import (
    hub_offline_message,
    hub_unreachable_message,
    is_hub_offline,
    is_hub_repo_id,
    local_path,
    looks_like_path,
    missing_path_error,
)

TIMM_PREFIX = "timm:"
TRANSFORMERS_PREFIX = "transformers:"
HUB_PREFIX = "hf-hub:"  # timm's prefix for a timm model on the Hub
LOCAL_MODEL_SOURCES = "a timm model name (e.g. resnet18) or a local model folder (holding config.json)"
MODEL_SOURCES = f"{LOCAL_MODEL_SOURCES}, or a Hub id (ORG/NAME, hf-hub:ORG/NAME for timm)"
CHECKPOINT_SOURCES = "a .safetensors or torch weights file, or a Trainer checkpoint-<step> folder"


def is_transformers_model(model: nn.Module) -> bool:
    """A transformers model, or a transformers detector wrapped for the detection task (saved as the model itself)."""
    from transformers import PreTrainedModel

    from .transformers_detection import TransformersDetector

    return isinstance(model, (PreTrainedModel, TransformersDetector))


def load_model(
    source: str,
    *,
    num_classes: int | None = None,
    checkpoint: str | None = None,
    pretrained: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Create the model named by ``source`` (see module docstring) and load ``checkpoint`` if given."""
    model_kwargs = dict(model_kwargs or {})
    library, location = _resolve_source(source)
    try:
        if library == "timm":
            model = _load_timm(location, num_classes, pretrained, model_kwargs)
        else:
            model = _load_transformers(location, num_classes, pretrained, model_kwargs, trust_remote_code)
    except TypeError as error:
        if not model_kwargs:
            raise
        # The constructor's "unexpected keyword argument" says neither which model nor which config key.
        raise ModelError(
            f"model '{source}' does not accept the keyword arguments {model_kwargs} ({error}); "
            "fix teacher_model_kwargs / student_model_kwargs"
        ) from None
    # Remember how the model was made so an export can rebuild it (timm's model_args).
    model.hf_freqkd_model_args = model_kwargs
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model


def check_model_source(source: str) -> None:
    """Resolve ``source`` as :func:`load_model` does, building and downloading nothing, so that a
    command refuses a missing folder, a folder that holds no saved model or an unknown name before it
    writes anything. A Hub id must be in the Hugging Face cache while ``HF_HUB_OFFLINE=1`` is set, and
    the Hub must answer otherwise; whether the repository exists is known only when it is loaded."""
    library, location = _resolve_source(source)
    if location.startswith(HUB_PREFIX):
        repo_id = location[len(HUB_PREFIX):]
    elif library == "transformers" and not os.path.isdir(location):
        repo_id = location
    else:
        return
    _refuse_unreachable_hub(source)
    if is_hub_offline():
        from huggingface_hub import try_to_load_from_cache

        # Every model on the Hub that hf_freqkd loads, timm's or transformers', has a config.json.
        if not isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            raise ModelError(hub_offline_message("model", source, f"give {LOCAL_MODEL_SOURCES}"))


def close_timm_names(name: str) -> list[str]:
    """Registered timm names near ``name``, for the "did you mean" of a mistyped model."""
    import timm

    return difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)


def _resolve_source(source: str) -> tuple[str, str]:
    import timm

    if not isinstance(source, str) or not source:
        raise ModelError(f"model source {source!r} is invalid: expected a timm model name, a local folder or a Hub id")
    if source.startswith(TIMM_PREFIX):
        return "timm", source[len(TIMM_PREFIX):]
    if source.startswith(TRANSFORMERS_PREFIX):
        return "transformers", source[len(TRANSFORMERS_PREFIX):]
    path = local_path(source)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            hint = (
                " It looks like a Trainer checkpoint: name the architecture as the model and pass this folder as the checkpoint."
                if (path / "model.safetensors").is_file()
                else ""
            )
            raise ModelError(f"model folder '{source}' has no config.json, so it is not a saved model.{hint}")
        config = json.loads(config_file.read_text())
        if "architecture" in config:
            return "timm", "local-dir:" + str(path.resolve())
        if "model_type" in config:
            return "transformers", str(path)
        raise ModelError(
            f"model folder '{source}': config.json has neither 'architecture' (timm) nor 'model_type' (transformers)"
        )
    if path.is_file():
        raise ModelError(
            f"model '{source}' is a file, not a model folder: give the folder holding config.json, or name the "
            "architecture as the model and pass this file as its checkpoint"
        )
    if source.startswith(HUB_PREFIX) or timm.is_model(source):
        return "timm", source
    # A missing local folder is told apart from a Hub id here, before any download is tried.
    if looks_like_path(source) or "/" in source and not is_hub_repo_id(source):
        raise missing_path_error("model", source, MODEL_SOURCES)
    if "/" in source:
        return "transformers", source
    close = close_timm_names(source)
    hint = f"; close timm names: {', '.join(close)}" if close else ""
    raise ModelError(
        f"model '{source}' is not a timm model name, a local model folder or a Hub id (ORG/NAME){hint}"
    )


def _from_hub(source: str, repo_id: str, load: Callable[[], nn.Module]) -> nn.Module:
    """``load()`` a model from the Hub, with one clear line when the Hub cannot serve ``repo_id``."""
    instead = f"give {LOCAL_MODEL_SOURCES}"
    _refuse_unreachable_hub(source)
    try:
        return load()
    except OSError as error:  # transformers' and huggingface_hub's "not found" / "cannot connect" errors
        if is_hub_offline():
            raise ModelError(hub_offline_message("model", source, instead)) from None
        reason = " ".join(str(error).split())
        raise ModelError(
            f"model '{source}' is not a local path and could not be loaded from the Hub ({reason}): check the Hub id, or {instead}"
        ) from None


def _refuse_unreachable_hub(source: str) -> None:
    unreachable = hub_unreachable_message("model", source, f"give {LOCAL_MODEL_SOURCES}")
    if unreachable:
        raise ModelError(unreachable)


def _load_timm(name: str, num_classes: int | None, pretrained: bool, model_kwargs: dict[str, Any]) -> nn.Module:
    import timm

    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    # A saved folder is its own pretrained weights: local-dir only loads them with pretrained=True.
    pretrained = pretrained or name.startswith("local-dir:")
    if name.startswith(HUB_PREFIX):
        # timm reads the config (and weights) of an hf-hub: model from the Hub even when not pretrained.
        return _from_hub(name, name[len(HUB_PREFIX):], lambda: timm.create_model(name, pretrained=pretrained, **kwargs))
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _load_transformers(
    name: str, num_classes: int | None, pretrained: bool, model_kwargs: dict[str, Any], trust_remote_code: bool
) -> nn.Module:
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForObjectDetection

    from .transformers_detection import TransformersDetector, is_object_detection_config

    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_labels"] = num_classes
    def load() -> nn.Module:
        saved = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        # Detectors (RT-DETR, D-FINE) load with their own auto class and get the detection interface.
        detector = is_object_detection_config(saved)
        auto_class = AutoModelForObjectDetection if detector else AutoModelForImageClassification
        if local or pretrained:
            if num_classes is not None:
                kwargs["ignore_mismatched_sizes"] = saved.num_labels != num_classes
            model = auto_class.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
        else:
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
            model = auto_class.from_config(config, trust_remote_code=trust_remote_code)
        return TransformersDetector(model) if detector else model

    local = os.path.isdir(name)
    return load() if local else _from_hub(name, name, load)


def model_architecture(model: nn.Module) -> str:
    """The name that rebuilds ``model``'s architecture: timm's registered name, or for transformers
    the Hub id it came from (else its architecture class). Never a local path."""
    if is_transformers_model(model):
        config = model.config
        source = getattr(config, "_name_or_path", "") or ""
        if source and not os.path.exists(source) and source.count("/") == 1 and not source.startswith((".", "/", "~")):
            return source
        architectures = getattr(config, "architectures", None) or []
        if architectures:
            return architectures[0]
        # A TransformersDetector is saved as the model it wraps.
        return type(model.model if getattr(model, "is_detection_model", False) else model).__name__
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return architecture or type(model).__name__


def model_num_classes(model: nn.Module) -> int:
    """Number of output classes of a timm or transformers classifier."""
    if is_transformers_model(model):
        return int(model.config.num_labels)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        raise ModelError(f"cannot tell the number of classes of {type(model).__name__}: it has no `num_classes`")
    return int(num_classes)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_file(path: str) -> Path:
    """The weights file a checkpoint setting names: the file itself, or a checkpoint folder's
    ``model.safetensors`` / ``pytorch_model.bin``. Reads no weights, so commands check it before writing."""
    if not os.path.exists(path):
        raise missing_path_error("checkpoint", path, CHECKPOINT_SOURCES)
    file = Path(path)
    if not file.is_dir():
        return file
    for candidate in ("model.safetensors", "pytorch_model.bin"):
        if (file / candidate).is_file():
            return file / candidate
    raise ModelError(
        f"checkpoint folder '{path}' holds no model.safetensors or pytorch_model.bin; "
        f"it contains: {', '.join(sorted(p.name for p in file.iterdir())) or 'nothing'}"
    )


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors/torch file or a Trainer checkpoint folder (safely)."""
    from safetensors.torch import load_file

    file = checkpoint_file(path)
    try:
        if file.suffix == ".safetensors":
            state = load_file(str(file))
        else:
            # weights_only: a checkpoint must never be able to run code on load.
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any reader failure means "not a checkpoint"
        raise ModelError(f"checkpoint '{file}' could not be read as safetensors or a torch state dict: {error}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint '{file}' is not a state dict of tensors")
    return state


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load ``path`` into ``model`` strictly, accepting hf_freqkd Trainer checkpoints (``student.`` keys)."""
    state = read_state_dict(path)
    for prefix in ("module.", "student.model.", "student."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    if any(key.startswith("student.model.") for key in state):
        # A Distiller checkpoint also holds method modules; keep only the student.
        state = {key[len("student.model."):]: v for key, v in state.items() if key.startswith("student.model.")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            k = mismatched[0]
            details.append(
                f"{len(mismatched)} with another shape (e.g. {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
            )
        raise ModelError(f"checkpoint '{path}' does not fit {type(model).__name__}: keys {'; '.join(details)}")
    model.load_state_dict(state)


# ----------------------------------------------------------------------------------------------
# Input configuration (size, normalisation) read from the model instead of repeated in configs.


def resolve_input_config(model: nn.Module) -> dict[str, Any]:
    """Input size, mean, std, interpolation and crop_pct the model expects."""
    if is_transformers_model(model) and hasattr(model, "default_input_config"):
        return dict(model.default_input_config)  # a transformers detector: its image processor's defaults
    if is_transformers_model(model):
        config = model.config
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return {
            "input_size": (getattr(config, "num_channels", 3), *size),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        }
    import timm.data

    data_config = dict(timm.data.resolve_data_config({}, model=model))
    # A ViT built with another img_size keeps the pretrained cfg's 224: trust the patch embedding.
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None:
        data_config["input_size"] = (data_config["input_size"][0], *tuple(img_size))
    in_chans = _first_conv_in_channels(model)
    if in_chans is not None:
        data_config["input_size"] = (in_chans, *data_config["input_size"][1:])
    channels = data_config["input_size"][0]
    for key in ("mean", "std"):
        if len(data_config[key]) != channels:
            data_config[key] = (sum(data_config[key]) / len(data_config[key]),) * channels
    return data_config


def _first_conv_in_channels(model: nn.Module) -> int | None:
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if not first_conv:
        return None
    try:
        return int(model.get_submodule(first_conv).in_channels)
    except (AttributeError, TypeError):
        return None

"""FreeKD's stage 1 in a search: prompts fitted once per prompt setting and reused by every trial.

A trial whose ``freekd`` reads prompts (``masks: prompts``) and names no ``prompts_path`` gets one
named after its stage-1 setting (the options stage 1 reads: layers, prompt count, wavelet, the
``prompt_*`` and ``dissimilarity*`` schedule) and the seed, ``<folder>/prompts-<digest>.safetensors``;
the first trial that needs it fits it (:func:`hf_freqkd.prompt_fitting.fit_prompts`), every later
one reads it. Trials that differ only in stage 2 (weight, MSE, relational weighting) share a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: stands for the prompts file a search fits, while the options are only being checked
PROMPTS_PLACEHOLDER = "<fitted by the search>"
#: freekd options stage 1 does not read: trials differing only in these share their prompts
STAGE_TWO_OPTIONS = frozenset(
    {"weight", "masks", "prompts_path", "distill_low", "mse_weight", "relational", "relation_hidden", "relation_temperature"}
)


def reads_fitted_prompts(name: str, options: dict[str, Any]) -> bool:
    """True when method ``name`` with ``options`` reads prompts the search must fit (freekd, masks: prompts, no prompts_path)."""
    if name != "freekd" or options.get("prompts_path"):
        return False
    from ..methods.freekd import FreeKDOptions

    return options.get("masks", FreeKDOptions.masks) == "prompts"


def complete_options(name: str, options_class: type, values: dict[str, Any]):
    """``options_class`` built from ``values`` (MethodOptionsError when invalid), a prompts file the
    search will fit standing in for a missing ``prompts_path``."""
    from ..methods.base import options_from_dict

    if reads_fitted_prompts(name, values):
        values = {**values, "prompts_path": PROMPTS_PLACEHOLDER}
    return options_from_dict(options_class, values, name)


def prompts_file(folder: str | Path, options, seed: int) -> Path:
    """The file holding the prompts of ``options``' stage-1 setting, fitted with ``seed``."""
    setting = {key: value for key, value in dataclasses.asdict(options).items() if key not in STAGE_TWO_OPTIONS}
    digest = hashlib.sha256(json.dumps({"seed": seed, **setting}, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(folder) / f"prompts-{digest}.safetensors"


def with_fitted_prompts(
    methods: dict[str, dict[str, Any]], folder: str | Path, seed: int, fit: Callable[[Any, Path], None]
) -> tuple[dict[str, dict[str, Any]], float]:
    """``methods`` with the prompts file of every freekd that needs one filled in, fitted first by
    ``fit(options, path)`` when missing (once across workers). Returns them and the seconds spent fitting."""
    from ..methods.freekd import FreeKDOptions
    from .shared import built_once

    methods = {name: dict(options) for name, options in methods.items()}
    seconds = 0.0
    for name, options in methods.items():
        if not reads_fitted_prompts(name, options):
            continue
        checked = complete_options(name, FreeKDOptions, options)
        path = prompts_file(folder, checked, seed)
        options["prompts_path"] = str(path)
        spent = built_once(path, lambda: fit(dataclasses.replace(checked, prompts_path=str(path)), path))
        seconds += spent or 0.0
    return methods, seconds

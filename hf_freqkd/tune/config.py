"""A tune config: an ``hf-freqkd distill`` config plus a ``search:`` section.

Everything outside ``search:`` is a distill config, the setting every trial shares (data, student,
teacher, schedule); its ``methods`` are the methods of every trial (``ce`` by default), whose
options may be ranges. ``search:`` holds the space (:mod:`hf_freqkd.tune.space`) and how to search::

    search:
      methods: [kd, figkd, fam_l2l]  # candidates, each with its default space
      params: {learning_rate: {low: 0.02, high: 0.1, log: true}}
      n_trials: 40                   # trials to train (duplicates of an earlier trial are not counted)
      pruner: median                 # median | hyperband | none: stop hopeless trials at an epoch's evaluation
      pruner_startup_trials: 5       # trials finished before the median pruner prunes
      sampler: tpe                   # tpe | random, seeded by seed (default: the config's seed)
      backend: optuna                # optuna | ray
      storage: null                  # an Optuna storage URL; default sqlite in output_dir (resumable)
      workers: 1                     # processes on this machine sharing the study
      teacher_cache: logits          # none | logits | all: which trials read a shared teacher cache
      student_alone: true            # train the student alone once: the unit of the search's cost

A search evaluates on a validation split carved from the training split (``validation_fraction``,
seeded by ``seed``) and never on the test split: a config without ``validation_fraction``, or with
an ``eval_split``, is refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..coercion import coerce
from ..config import apply_overrides, parse_config, read_yaml_config
from ..errors import ConfigError
from .space import SearchSpace

BACKENDS = ("optuna", "ray")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
TEACHER_CACHE_MODES = ("none", "logits", "all")


@dataclass
class SearchSettings:
    """The ``search:`` section (see the module docstring)."""

    methods: Any = None
    params: dict = field(default_factory=dict)
    n_trials: int = 20
    pruner: str = "median"
    pruner_startup_trials: int = 5
    sampler: str = "tpe"
    seed: int | None = None
    backend: str = "optuna"
    study_name: str | None = None
    storage: str | None = None
    workers: int = 1
    teacher_cache: str = "logits"
    student_alone: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (("pruner", PRUNERS), ("sampler", SAMPLERS), ("backend", BACKENDS), ("teacher_cache", TEACHER_CACHE_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"search.{name} = {getattr(self, name)!r} is invalid: expected one of {', '.join(allowed)}")
        for name in ("n_trials", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"search.{name} = {getattr(self, name)} is invalid: expected an integer >= 1")
        if self.pruner_startup_trials < 0:
            raise ConfigError(f"search.pruner_startup_trials = {self.pruner_startup_trials} is invalid: expected an integer >= 0")


@dataclass
class TuneConfig:
    """A parsed, checked tune config."""

    values: dict[str, Any]  # the distill config as written (overrides applied), without search:
    search: SearchSettings
    space: SearchSpace
    args: Any  # DistillationConfig of every trial before the trial's settings
    model_args: Any
    data_args: Any
    source: str | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def study_name(self) -> str:
        return self.search.study_name or self.output_dir.resolve().name

    @property
    def seed(self) -> int:
        return self.search.seed if self.search.seed is not None else self.args.seed


def load_tune_config(
    path: str | Path | None, overrides: list[str] | None = None, storage: str | None = None, workers: int | None = None
) -> TuneConfig:
    """Read, override (``search.n_trials=8``, ``learning_rate=0.1``) and check a tune config; ``storage``
    and ``workers`` (the command's ``--storage`` / ``--workers``) replace ``search:``'s."""
    overrides = list(overrides or [])
    values = apply_overrides(read_yaml_config(path) if path is not None else {}, overrides)
    raw_search = values.pop("search", None)
    if not isinstance(raw_search, dict):
        raise ConfigError(
            "a tune config needs a search: section (a mapping), e.g. search: {methods: [kd, figkd, fam_l2l], n_trials: 20}; "
            "see docs/tune.md"
        )
    if storage is not None:
        raw_search["storage"] = storage
    if workers is not None:
        raw_search["workers"] = workers
    search = _search_settings(raw_search)
    base_methods = values.get("methods")
    # The trials' own methods come from the space; the shared config is checked with ce alone. Trials
    # save no checkpoints (a stopped trial is trained again) and, to be pruned, evaluate every epoch.
    engine = {"methods": {}, "save_strategy": "no", "load_best_model_at_end": False}
    if search.pruner != "none":
        engine["eval_strategy"] = "epoch"
    args, model_args, data_args = parse_config(defaults={**values, **engine})
    check_validation_split(data_args)
    space = SearchSpace.parse(search.methods, search.params, base_methods)
    space.check(args)
    if search.backend == "ray" and search.storage is not None:
        raise ConfigError("search.storage (--storage) is an Optuna storage; with backend: ray the experiment lives in output_dir/ray")
    return TuneConfig(values, search, space, args, model_args, data_args, str(path) if path is not None else None, overrides)


def check_validation_split(data_args) -> None:
    """A search chooses on data carved from the training split, never on the test split."""
    if data_args.eval_split is not None:
        raise ConfigError(
            f"eval_split = '{data_args.eval_split}': a search must not choose on an evaluation split that is not carved from the "
            "training split (it may be the test split); remove eval_split and set validation_fraction (e.g. 0.1)"
        )
    if data_args.validation_fraction is None:
        raise ConfigError(
            "validation_fraction is not set: a search evaluates every trial on a validation split held out of the training "
            "split, never on the test split; set validation_fraction (e.g. 0.1)"
        )


def _search_settings(raw: dict[str, Any]) -> SearchSettings:
    fields = {f.name: f for f in dataclasses.fields(SearchSettings)}
    unknown = [key for key in raw if key not in fields]
    if unknown:
        words = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            words.append(f"'{key}'" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ConfigError(f"unknown search key {', '.join(words)}; search keys: {', '.join(fields)}")
    hints = typing.get_type_hints(SearchSettings)
    values = {}
    for key, value in raw.items():
        if key in ("methods", "params"):
            values[key] = value if value is not None else ({} if key == "params" else None)
            continue
        try:
            values[key] = coerce(value, hints[key])
        except TypeError as error:
            raise ConfigError(f"search.{key} = {value!r} is invalid: {error}") from None
    return SearchSettings(**values)

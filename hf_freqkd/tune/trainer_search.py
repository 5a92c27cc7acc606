"""``DistillationTrainer.hyperparameter_search``: transformers' search, the distillation rebuilt per trial.

transformers' ``Trainer`` searches by calling ``train(trial=...)`` once per trial: ``model_init``
gives a fresh model, then ``hp_space(trial)`` is applied to ``args``, and each evaluation reports
the objective (Optuna: ``trial.report`` and pruning; Ray Tune: ``tune.report``). A distillation is
more than the model: :class:`HyperparameterSearch` makes ``model_init`` give the *student*, and
builds around it, per trial, what :func:`hf_freqkd.factory.build_distillation` builds for a run -
the Distiller, the methods and their adapters, the teacher's feature hooks - for the trial's
``methods`` (a DistillationConfig field like any other, so ``hp_space`` may return it). The teacher
network is loaded once and kept; so are the data. Each trial trains in its own folder,
``output_dir/<hp_name(trial) or run-<id>>``, where it leaves its run record and exported student.

Per trial, the FreeKD prompts a trial's settings need are fitted once and reused
(:mod:`hf_freqkd.tune.prompts`), and with :attr:`HyperparameterSearch.search_teacher_cache` set the
trial reads the shared teacher cache (:class:`TeacherCachePolicy`).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

logger = logging.getLogger(__name__)


class HeadlineMetric:
    """The objective of a search: the task's headline evaluation metric (``eval_accuracy``, ``eval_mean_iou``, ``eval_map``)."""

    def __init__(self, task):
        key, label = task.benchmark_metrics[0]
        self.key, self.label = f"eval_{key}", label

    def __call__(self, metrics: dict[str, float]) -> float:
        if self.key not in metrics:
            raise ConfigError(f"the evaluation reported no {self.key} (it reported {', '.join(sorted(metrics))})")
        return float(metrics[self.key])


@dataclass
class TeacherCachePolicy:
    """Which trials read a teacher cache, and which: one per data seed under ``folder``, shared by trials.

    ``mode`` ``logits``: trials whose methods read only the teacher's logits read
    ``folder/seed<s>/logits``; the others run the teacher. ``all``: every trial with a teacher reads
    ``folder/seed<s>/all``, holding the logits and ``layers`` (the teacher layers of every candidate).
    """

    folder: Path
    mode: str = "logits"
    layers: list[str] | None = None

    def apply(self, args, methods: Mapping[str, Any]) -> None:
        from ..methods.base import DistillationMethod
        from ..methods.registry import get_method_class

        classes = [get_method_class(name) for name in methods]
        uses_teacher = any(cls.uses_teacher for cls in classes)
        reads_features = any(cls.uses_teacher and cls.feature_request is not DistillationMethod.feature_request for cls in classes)
        seed = args.data_seed if args.data_seed is not None else args.seed
        cache = None
        if uses_teacher and self.mode == "all":
            cache = self.folder / f"seed{seed}" / "all"
        elif uses_teacher and self.mode == "logits" and not reads_features:
            cache = self.folder / f"seed{seed}" / "logits"
        args.teacher_cache = str(cache) if cache is not None else None
        args.teacher_cache_features = cache is not None and self.mode == "all"
        args.teacher_cache_layers = list(self.layers) if cache is not None and self.mode == "all" and self.layers else None


def student_from_model_init(model, model_init):
    """The student ``DistillationTrainer`` builds its first distillation around: ``model``, or what
    ``model_init`` returns (called with no trial) when only it is given."""
    if model is not None or model_init is None:
        return model
    student = model_init(None) if len(inspect.signature(model_init).parameters) == 1 else model_init()
    if student is None:
        raise ConfigError("model_init returned None: it must return a new student network")
    return student


class HyperparameterSearch:
    """Mixed into ``DistillationTrainer`` (ahead of ``transformers.Trainer``): ``model_init`` gives the
    student, the distillation is rebuilt around it for each trial, each trial trains in its own folder."""

    #: the search's output_dir while a trial trains in its own folder (then ``args.output_dir``)
    _search_dir: str | None = None
    _teacher_network = None
    _search_parts = None
    #: set by ``hf-freqkd tune``: which trials read a shared teacher cache (None: as ``args`` says)
    search_teacher_cache: TeacherCachePolicy | None = None
    #: seconds the last rebuild spent fitting FreeKD prompts (once per stage-1 setting)
    search_prompt_seconds: float = 0.0

    def __init__(self, *args, model_init=None, **kwargs):
        if model_init is not None and any(item is not None for item in kwargs.get("optimizers", (None, None))):
            raise ConfigError("model_init builds a new student for each trial, so optimizers= cannot be given with it")
        # transformers' Trainer refuses a model with a model_init; the model here is the Distiller built
        # around model_init's first student.
        super().__init__(*args, **kwargs)
        self.model_init = model_init

    # ------------------------------------------------------------------------------------------
    # The search

    def hyperparameter_search(
        self, hp_space=None, compute_objective=None, n_trials: int = 20, direction=None, backend=None, hp_name=None, **kwargs
    ):
        """Search as ``transformers.Trainer.hyperparameter_search`` does (Optuna or Ray Tune, ``model_init``
        required), with a distillation's defaults:

        Args:
            hp_space: a function of the backend's trial returning settings, where ``"methods"`` (a
                ``{method: {option: value}}`` mapping) rebuilds the distillation; or a
                :class:`~hf_freqkd.tune.SearchSpace`; or its YAML form, ``{"methods": [...], "params": {...}}``
                (docs/tune.md). Default: :meth:`SearchSpace.from_methods` of ``args.methods``, the
                methods' default spaces.
            compute_objective: default the task's headline evaluation metric (``eval_accuracy`` for
                classification), and then ``direction`` defaults to ``"maximize"``.
            kwargs: as transformers'. Optuna: a ``sampler`` defaults to TPE seeded with ``args.seed``.
                Ray Tune: ``storage_path`` defaults to ``output_dir/ray``.

        Returns transformers' ``BestRun``; its ``hyperparameters`` hold the trial's settings as the
        backend sampled them (``method``, ``kd.temperature``, ...).
        """
        from transformers.hyperparameter_search import default_hp_search_backend
        from transformers.trainer_utils import HPSearchBackend

        if self.model_init is None:
            raise ConfigError("hyperparameter_search builds a new student for each trial: pass model_init= (a function returning the student)")
        space = as_search_space(hp_space, self.args)
        if compute_objective is None:
            compute_objective = HeadlineMetric(self.task)
            direction = direction or "maximize"
        chosen = HPSearchBackend(backend if backend is not None else default_hp_search_backend())
        if chosen == HPSearchBackend.OPTUNA and "sampler" not in kwargs:
            import optuna

            kwargs["sampler"] = optuna.samplers.TPESampler(seed=self.args.seed)
        if chosen == HPSearchBackend.RAY:
            kwargs.setdefault("storage_path", os.path.abspath(os.path.join(self.args.output_dir, "ray")))
        return super().hyperparameter_search(space, compute_objective, n_trials, direction or "minimize", chosen, hp_name, **kwargs)

    def search_trial_settings(self, trial) -> dict[str, Any]:
        """A trial's settings, ``{"methods": ..., "<field>": value}``: what ``hp_space`` gives it."""
        from transformers.trainer_utils import HPSearchBackend

        from .space import SearchSpace

        if trial is None or self.hp_search_backend is None:
            return {}
        if self.hp_search_backend == HPSearchBackend.RAY:
            return self.hp_space.settings_from_ray(trial) if isinstance(self.hp_space, SearchSpace) else dict(trial)
        return dict(self.hp_space(trial))

    # ------------------------------------------------------------------------------------------
    # Per trial: the distillation rebuilt around model_init's student, the settings applied

    def call_model_init(self, trial=None):
        from ..factory import DistillationParts

        student = super().call_model_init(trial)
        if isinstance(student, DistillationParts):
            raise ConfigError("model_init must return the student network; the distillation is built around it for each trial")
        settings = self.search_trial_settings(trial)
        return self.rebuild_distillation(student, settings.get("methods", self.args.methods)).distiller

    def rebuild_distillation(self, student, methods):
        """Build the distillation of ``methods`` around ``student`` (the teacher network kept), and make it the trainer's."""
        from ..factory import build_distillation
        from ..methods.registry import normalize_method_specs
        from .prompts import with_fitted_prompts

        if self.teacher is not None:
            self._teacher_network = self.teacher.model
            self.teacher.remove_hooks()
        methods, self.search_prompt_seconds = with_fitted_prompts(
            normalize_method_specs(methods), Path(self._search_dir or self.args.output_dir) / "prompts", self.args.seed, self._fit_prompts
        )
        parts = build_distillation(student, self._teacher_network, methods, train_dataset=self.train_dataset, args=self.args, task=self.task)
        if parts.teacher is not None:
            self._teacher_network = parts.teacher.model
        self.teacher = self.accelerator.prepare_model(parts.teacher, evaluation_mode=True) if parts.teacher is not None else None
        self._search_parts, self._search_methods = parts, methods
        return parts

    def _fit_prompts(self, options, path: Path) -> None:
        from ..factory import load_teacher
        from ..methods.freekd import FreeKD
        from ..prompt_fitting import fit_prompts

        teacher = self._teacher_network
        if teacher is None:
            teacher = self._teacher_network = load_teacher(None, self.args, [FreeKD(options)], self._search_num_classes())
        fit_prompts(teacher, self.train_dataset, options, args=self.args, output_path=str(path), teacher_name=self.args.teacher_model)

    def _search_num_classes(self) -> int:
        from ..models.loading import model_num_classes

        return model_num_classes(self.student)

    # Private Trainer override: the one place a trial's settings reach args, after model_init and before training.
    def _hp_search_setup(self, trial) -> None:
        from transformers.trainer_utils import HPSearchBackend

        from .space import SearchSpace

        settings = self.search_trial_settings(trial)
        if trial is not None and self.hp_search_backend == HPSearchBackend.RAY and isinstance(self.hp_space, SearchSpace):
            trial = settings  # the flat Ray config as settings transformers can apply to args
        super()._hp_search_setup(trial)
        if self._search_parts is not None and self.model_init is not None:
            self._after_search_settings(settings)

    def apply_search_settings(self, settings: Mapping[str, Any]):
        """Prepare this trainer as a trial with ``settings`` would be, without training: a new student
        from ``model_init``, the distillation rebuilt, ``args`` set, the teacher cache built or opened.
        Returns the parts (``hf-freqkd tune`` checks every candidate this way before the first trial)."""
        student = student_from_model_init(None, self.model_init)
        parts = self.rebuild_distillation(student, settings.get("methods", self.args.methods))
        for key, value in settings.items():
            setattr(self.args, key, value)
        self._after_search_settings(settings)
        return parts

    def _after_search_settings(self, settings: Mapping[str, Any]) -> None:
        """What follows the settings into ``args``: the rebuilt methods (prompts files filled in), the
        teacher cache, the per-run state of the trainer, the run record."""
        from ..training import LossTermMeans
        from ..training.clipping import GradientClippingCount

        for key, value in settings.items():
            # transformers casts a setting to the type of the value it replaces: None would become "None".
            if value is None:
                setattr(self.args, key, None)
        self.args.methods = self._search_methods
        if self.search_teacher_cache is not None:
            self.search_teacher_cache.apply(self.args, self._search_methods)
        self._updates_per_epoch = None
        self._term_means = LossTermMeans()
        self._logged_at = (0, 0)
        self.skipped_steps = 0
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, GradientClippingCount):
                callback.steps = callback.clipped = 0
        parts = self._search_parts
        self.teacher_cache_plan = self._teacher_cache_plan(parts) if self.args.teacher_cache else None
        self.teacher_cache = self.teacher_cache_plan.open() if self.teacher_cache_plan is not None else None
        if self.teacher_cache_plan is not None and self.teacher_cache is None:
            from .shared import exclusive

            # Workers reaching a missing cache together: one builds it, the others then open it.
            with exclusive(Path(self.args.teacher_cache).parent / f".{Path(self.args.teacher_cache).name}.lock"):
                self.teacher_cache = self.build_teacher_cache()
        self.run_record = self._initial_run_record(parts)

    # ------------------------------------------------------------------------------------------
    # Each trial in its own folder

    def starts_search_trial(self, trial) -> bool:
        """True when ``train(trial=...)`` starts a search trial (and has not yet moved into its folder)."""
        return trial is not None and self.hp_search_backend is not None and self._search_dir is None

    def train_search_trial(self, resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs):
        """``train`` with ``args.output_dir`` the trial's folder, ``output_dir/<hp_name(trial) or run-<id>>``:
        its checkpoints, run record and exported student go there, not over another trial's."""
        folder = self._get_output_dir(trial)
        self._search_dir, self.args.output_dir = self.args.output_dir, folder
        try:
            return self.train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        finally:
            self.args.output_dir, self._search_dir = self._search_dir, None

    # Private Trainer override: while a trial trains, args.output_dir already is its folder.
    def _get_output_dir(self, trial) -> str:
        return super()._get_output_dir(None if self._search_dir is not None else trial)


def as_search_space(hp_space, args):
    """``hp_space`` as ``hyperparameter_search`` uses it: a function of the trial (kept), a
    :class:`SearchSpace` or its YAML form (checked against ``args``), or None (the default space of ``args.methods``)."""
    from .space import SearchSpace

    if hp_space is None:
        space = SearchSpace.from_methods(args.methods)
    elif isinstance(hp_space, SearchSpace):
        space = hp_space
    elif isinstance(hp_space, Mapping):
        unknown = sorted(set(hp_space) - {"methods", "params"})
        if unknown:
            raise ConfigError(f"hp_space has keys {', '.join(unknown)}: a search space mapping holds methods and params")
        space = SearchSpace.parse(hp_space.get("methods"), hp_space.get("params"))
    elif callable(hp_space):
        return hp_space
    else:
        raise ConfigError(f"hp_space = {hp_space!r} is invalid: expected a function of the trial, a SearchSpace or a mapping")
    space.check(args)
    return space

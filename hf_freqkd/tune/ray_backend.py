"""``backend: ray``: the same search on Ray Tune, for clusters (``pip install -e ".[ray]"``).

The trials run through ``DistillationTrainer.hyperparameter_search(backend="ray")``, that is
transformers' Ray backend: the trainer (data, teacher network) is shipped to Ray's workers once,
each trial samples the space's flat Ray config (every candidate's options; the chosen method's are
used), rebuilds the distillation around a new student and reports each evaluation's objective
(``tune.report``); a scheduler stops hopeless trials (``pruner: median`` is Ray's
MedianStoppingRule, ``hyperband`` its ASHA). ``ray.init()`` joins the cluster named by
``RAY_ADDRESS``, else starts a local Ray instance; ``search.workers`` trials run at a time, each on
its share of the CPUs. The experiment lives in ``output_dir/ray``: rerunning the command resumes it.

Before the trials, the driver checks the space, builds the teacher cache and trains the student
alone as the Optuna engine does; after them it writes the same report (no importances: those come
from Optuna's study).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import ConfigError
from .report import TrialRow, trial_settings_row, write_report
from .study import STUDENT_ALONE, Tuner, TuneResult, removed_if_new

#: what the driver measured besides the trials (the Optuna engine keeps it in its study)
STATE_FILE = "hf_freqkd_search.json"


def run_ray_search(config, log=print) -> TuneResult:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError('search.backend is ray but Ray Tune is not installed: pip install -e ".[ray]" (or pip install "ray[tune]")') from None
    tuner = Tuner(config, log)
    with removed_if_new(config.output_dir):
        tuner.prepare()
    folder = (config.output_dir / "ray").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    state_file = folder / STATE_FILE
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    seconds = tuner.build_teacher_cache()
    if seconds is not None:
        state["teacher_cache_seconds"] = seconds
    if config.search.student_alone and STUDENT_ALONE not in state:
        state[STUDENT_ALONE] = tuner.run_student_alone()
    state_file.write_text(json.dumps(state, indent=1))

    trainer = tuner.trainer
    trainer.teacher_cache = None  # memory maps stay here; each trial opens the cache itself
    workers = config.search.workers
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    per_trial = max(1, cpus // workers)
    best = trainer.hyperparameter_search(
        hp_space=tuner.space,
        compute_objective=trainer.compute_objective,
        n_trials=config.search.n_trials,
        direction="maximize",
        backend="ray",
        resources_per_trial={"cpu": per_trial},
        max_concurrent_trials=workers,
        storage_path=str(folder),
        name=config.study_name,
        scheduler=_scheduler(config.search),
        resume="AUTO" if any((folder / config.study_name).glob("experiment_state-*.json")) else False,
        verbose=0,
        raise_on_failed_trial=False,
    )
    trials = sorted(best.run_summary.trials, key=lambda t: t.trial_id)
    rows = [_row(trial, index, tuner.space) for index, trial in enumerate(trials)]
    # A trial the scheduler stopped ends TERMINATED too, after fewer evaluations than the others.
    evaluations = [(t.last_result or {}).get("training_iteration", 0) for t in trials]
    for row, count in zip(rows, evaluations):
        if row.state == "complete" and count < max(evaluations):
            row.state, row.note = "pruned", f"stopped after {count} evaluation(s)"
    for row in rows:
        log(f"trial {row.number} {row.method} {row.settings_words}: {row.state}"
            + (f", {trainer.compute_objective.label} {100 * row.objective:.2f} %" if row.objective is not None else ""))
    configs = {row.number: trial.config for row, trial in zip(rows, trials)}
    return write_report(config, rows, state, trainer.compute_objective.label, lambda row: tuner.space.settings_from_ray(configs[row.number]))


def _scheduler(search):
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    if search.pruner == "median":
        return MedianStoppingRule(metric="objective", mode="max", min_samples_required=max(1, search.pruner_startup_trials))
    if search.pruner == "hyperband":
        return ASHAScheduler(metric="objective", mode="max")
    return None


def _row(trial, number: int, space) -> TrialRow:
    result = trial.last_result or {}
    objective = result.get("objective")
    objective = float(objective) if isinstance(objective, (int, float)) and math.isfinite(objective) else None
    state = {"TERMINATED": "complete", "ERROR": "failed"}.get(trial.status, trial.status.lower())
    note = ""
    if state == "failed":
        error = Path(trial.local_path or "", "error.txt") if getattr(trial, "local_path", None) else None
        note = (error.read_text().strip().splitlines() or [""])[-1][:300] if error is not None and error.is_file() else "see Ray's trial log"
    settings = space.settings_from_ray(trial.config)
    return trial_settings_row(number, settings, objective, state, float(result.get("time_total_s", 0.0)), note, dict(trial.config))

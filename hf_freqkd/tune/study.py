"""``hf-freqkd tune``: the search on Optuna, embedded by default, shared by workers and machines.

One :class:`Tuner` per process: it loads the data, the teacher and a ``DistillationTrainer`` once
(:func:`prepare`), then trains one trial after another through the trainer's
``hyperparameter_search`` machinery (``train(trial=...)``: the distillation rebuilt around a new
student, the trial's settings applied, each epoch's evaluation reported to Optuna, which prunes).
Around that, what a long search on shared machines needs:

* The study lives in an Optuna storage: by default ``output_dir/study.db`` (SQLite), any Optuna
  storage URL with ``--storage`` (PostgreSQL, MySQL; ``journal:PATH`` for a journal file). The same
  command started again, on this machine or another, joins the study (``load_if_exists``): the
  finished trials are kept and the budget (``n_trials``) is the study's, not the process's.
* A trial whose process died (kill -9, a machine lost) is found and trained again with the same
  settings: at start, a RUNNING trial of a process of this machine that no longer exists; on a
  database storage, a trial whose heartbeat stopped (any machine). Ctrl-C reruns the trial stopped.
* The sampler (TPE, seeded) is reseeded for each trial from the seed and the trial's place in the
  study, interrupted trials not counted: a resumed study samples what an uninterrupted one would,
  and two workers never draw alike.
* Settings equal to an earlier trial's (``figkd`` with ``bands: all`` is ``kd``; a categorical space
  drawn twice) are not trained again: the trial takes the earlier one's result, is recorded as its
  duplicate and does not count against ``n_trials``.
* A trial that diverges (a non-finite loss, every update skipped) or whose settings cannot be built
  is recorded as failed, with its error, and the search goes on.
* The teacher cache is built once before the first trial; FreeKD's prompts once per setting.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import multiprocessing
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import optuna
from optuna.trial import TrialState
from transformers.trainer_utils import HPSearchBackend

from ..errors import BadInputError, ConfigError, TrainingError
from ..output_dir import write_record
from .config import TuneConfig, load_tune_config
from .prompts import reads_fitted_prompts
from .space import Choice, reported_methods, settings_key
from .shared import process_is_alive

logger = logging.getLogger(__name__)

STORAGE_FILE = "study.db"
STUDENT_ALONE = "student_alone"
#: a database storage fails a trial whose process has not written a heartbeat for GRACE seconds
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 300
#: a process stops after this many duplicates in a row: the space has no new settings left
MAX_DUPLICATES_IN_A_ROW = 50
#: trial user attributes
WORKER, RERUN_OF, DUPLICATE_OF, OVER_BUDGET, SETTINGS_KEY, SECONDS, ERROR, EPOCHS = (
    "worker", "rerun_of", "duplicate_of", "over_budget", "settings_key", "seconds", "error", "epochs"
)


# ----------------------------------------------------------------------------------------------
# Storage, sampler, pruner


def default_storage(output_dir: str | Path) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / STORAGE_FILE}"


def open_storage(url: str):
    """The Optuna storage named by ``url``; a ConfigError saying why when it cannot be opened."""
    journal = url.removeprefix("journal:") if url.startswith("journal:") or url.endswith(".journal") else None
    if journal is not None:
        path = Path(journal).expanduser()
        if not path.parent.is_dir():
            raise ConfigError(f"storage '{url}': folder '{path.parent}' does not exist; create it or give another journal file")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).expanduser().parent
        if not folder.is_dir():
            raise ConfigError(f"storage '{url}': folder '{folder}' does not exist; create it or give another sqlite file")
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                failed_trial_callback=rerun_stale_trial,
                # Workers write the same SQLite file: wait for its lock rather than fail at once.
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
            )
    except Exception as error:  # noqa: BLE001 - a wrong URL, a missing driver, a host that does not answer
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise ConfigError(
            f"storage '{url}' cannot be opened ({reason}); give a reachable Optuna storage URL (sqlite:///path, "
            "postgresql://user:password@host/database with its driver installed, journal:path), or no --storage for output_dir/study.db"
        ) from None


def rerun_stale_trial(study: optuna.Study, trial) -> None:
    """Heartbeat callback: a trial whose process stopped answering is trained again with its settings."""
    enqueue_rerun(study, trial)


def enqueue_rerun(study: optuna.Study, trial) -> None:
    study.enqueue_trial(dict(trial.params), user_attrs={RERUN_OF: trial.number})


def interrupted_numbers(trials) -> set[int]:
    """Trials stopped before they finished and trained again (each has a rerun naming it)."""
    return {t.user_attrs[RERUN_OF] for t in trials if RERUN_OF in t.user_attrs}


def counted(trial, interrupted: set[int]) -> bool:
    """True for a trial that counts against ``n_trials``: started or finished, not interrupted, not a
    duplicate of another, not one started by two workers at once past the budget."""
    attrs = trial.user_attrs
    return trial.state != TrialState.WAITING and trial.number not in interrupted and DUPLICATE_OF not in attrs and OVER_BUDGET not in attrs


class ReseededSampler(optuna.samplers.BaseSampler):
    """A sampler (TPE or random, from ``make(seed)``) made anew before each trial with a seed drawn from
    ``seed`` and the trial's place in the study (its number, interrupted trials before it not counted).

    The same study history then gives the same draws whether or not the study was interrupted and
    resumed, and workers running trials side by side draw with different seeds."""

    def __init__(self, make, seed: int):
        self._make, self._seed = make, seed
        self._sampler = make(seed)

    def before_trial(self, study, trial) -> None:
        place = trial.number - sum(1 for number in interrupted_numbers(study.get_trials(deepcopy=False)) if number < trial.number)
        self._sampler = self._make(int(numpy.random.SeedSequence([self._seed, place]).generate_state(1)[0]))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._sampler.after_trial(study, trial, state, values)


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return ReseededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    return ReseededSampler(lambda s: optuna.samplers.TPESampler(seed=s), seed)


def make_pruner(kind: str, startup_trials: int, updates_per_epoch: int) -> optuna.pruners.BasePruner:
    """Pruners on the per-epoch evaluations, reported at the trainer's global step."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=updates_per_epoch, max_resource="auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ----------------------------------------------------------------------------------------------
# The engine


@dataclass
class TuneResult:
    """What a finished search leaves: the report's files and the summary lines printed at the end."""

    files: dict[str, str]
    summary: list[str]


class Tuner:
    """One process's part of a search: its trainer, its connection to the study, its trials."""

    def __init__(self, config: TuneConfig, log=print):
        self.config = config
        self.space = config.space
        self.log = log
        self.trainer = None
        self.study: optuna.Study | None = None
        self.storage_url = config.search.storage
        self._current = None

    # ------------------------------------------------------------------------------------------
    # Setting up, every check before the first trial

    def prepare(self, check_candidates: bool = True) -> None:
        """Load the data, the student and the teacher, build the trainer; with ``check_candidates``,
        build each candidate at the ends of its ranges (a setting that cannot be built is refused)."""
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from ..models.loading import load_model
        from ..run import input_config_for
        from ..tasks import get_task
        from ..trainer import DistillationTrainer, set_seed_for
        from .trainer_search import HeadlineMetric, TeacherCachePolicy

        config = self.config
        args, model_args, data_args = copy.copy(config.args), config.model_args, config.data_args
        set_seed_for(args)
        data = load_validation_split(args, model_args, data_args)

        def model_init():
            return load_model(
                model_args.student_model, num_classes=data.num_classes, checkpoint=model_args.student_checkpoint,
                pretrained=model_args.student_pretrained, model_kwargs=model_args.student_model_kwargs,
                trust_remote_code=args.trust_remote_code,
            )

        student = model_init()
        train, evaluation = data.formatted(input_config_for(student, data_args), data_args.augmentation)
        trainer = DistillationTrainer(
            model=student, model_init=model_init, args=args, train_dataset=train, eval_dataset=evaluation,
            task=get_task(data_args.task), class_names=data.class_names,
        )
        for callback in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(callback)  # one line per trial instead (see _progress)
        trainer.hp_search_backend = HPSearchBackend.OPTUNA
        trainer.hp_space = self.space
        trainer.compute_objective = HeadlineMetric(trainer.task)
        trainer.hp_name = lambda trial: STUDENT_ALONE if trial.number < 0 else f"trial-{trial.number:03d}"
        mode = config.search.teacher_cache
        if mode != "none" and trainer.task.name == "classification":
            trainer.search_teacher_cache = TeacherCachePolicy(config.output_dir.resolve() / "teacher_cache", mode)
        self.trainer = trainer
        if check_candidates:
            layers = self._check_candidates()
            if trainer.search_teacher_cache is not None:
                trainer.search_teacher_cache.layers = layers

    def _check_candidates(self) -> list[str]:
        """Build every candidate at the ends of its ranges and at each of its choices; the teacher
        layers they read (one teacher cache holding all of them serves ``teacher_cache: all``)."""
        layers: list[str] = []
        base = self._fixed_base_methods()
        for name, specs in (self.space.methods or {"ce": {}}).items():
            for options in corner_options(name, specs):
                if reads_fitted_prompts(name, options):
                    options = {**options, "masks": "uniform"}  # the prompts are fitted when a trial needs them
                try:
                    parts = self.trainer.rebuild_distillation(self.trainer.model_init(), {**base, name: options})
                except BadInputError as error:
                    raise type(error)(f"search space: {name} with {_options_words(options)} cannot be built: {error}") from None
                if parts.teacher is not None:
                    layers += [layer for layer in parts.teacher.layers if layer not in layers]
        return layers

    def _fixed_base_methods(self) -> dict[str, dict[str, Any]]:
        return {name: {o: s.test_values()[0] for o, s in specs.items()} for name, specs in self.space.base.items()}

    def open_study(self, create: bool = True) -> None:
        """Open the storage and create or join the study; refuse one searching another space."""
        if self.storage_url is None:
            self.config.output_dir.mkdir(parents=True, exist_ok=True)
            self.storage_url = default_storage(self.config.output_dir)
        storage = open_storage(self.storage_url)
        search = self.config.search
        sampler = make_sampler(search.sampler, self.config.seed)
        pruner = make_pruner(search.pruner, search.pruner_startup_trials, self.trainer._count_updates_per_epoch() if self.trainer else 1)
        name = self.config.study_name
        if not create:
            self.study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
            return
        self.study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True
        )
        described = self.space.describe()
        stored = self.study.user_attrs.get("space")
        if stored is None:
            self.study.set_user_attr("space", described)
            self.study.set_user_attr("objective", self.trainer.compute_objective.key)
        elif stored != described:
            differences = self.space.differences(stored)
            raise ConfigError(
                f"study '{name}' in {self.storage_url} searches another space: {'; '.join(differences)}. A study never mixes "
                "two spaces: restore the study's space, or give another study_name (search.study_name) or output_dir"
            )
        if self.trainer.search_teacher_cache is not None:
            self.study.set_user_attr("teacher_cache_layers", self.trainer.search_teacher_cache.layers)

    # ------------------------------------------------------------------------------------------
    # Running

    def build_teacher_cache(self) -> float | None:
        """Build the shared teacher cache before the first trial, so that no trial's time holds it;
        the seconds it took, or None when there is none to build."""
        policy = self.trainer.search_teacher_cache
        if policy is None:
            return None
        base = self._fixed_base_methods()
        for name, specs in self.space.methods.items() or [(None, {})]:  # no candidates: the methods of every trial
            options = corner_options(name, specs)[0] if name is not None else {}
            methods = {**base, name: options} if name is not None else base
            probe = copy.copy(self.trainer.args)
            policy.apply(probe, methods)
            if probe.teacher_cache is None or reads_fitted_prompts(name, options):
                continue
            already = Path(probe.teacher_cache).exists()
            start = time.perf_counter()
            self.trainer.apply_search_settings({"methods": methods})
            return None if already else time.perf_counter() - start
        return None

    def run_student_alone(self) -> dict[str, float]:
        """Train the student alone (``ce``) once, on the same schedule: its time is the unit of the search's cost."""
        folder = self.config.output_dir / STUDENT_ALONE
        if folder.exists():
            shutil.rmtree(folder)  # left by a process stopped while training it
        settings = {"methods": {"ce": self._fixed_base_methods().get("ce", {})}}
        self.log("student alone (ce): training once, the unit of the search's cost")
        trainer = self.trainer
        backend, space = trainer.hp_search_backend, trainer.hp_space
        trainer.hp_search_backend, trainer.hp_space = HPSearchBackend.OPTUNA, lambda trial: settings
        start = time.perf_counter()
        try:
            value = self._train(optuna.trial.FixedTrial({}, number=-1))
        finally:
            trainer.hp_search_backend, trainer.hp_space = backend, space
        seconds = time.perf_counter() - start
        self.log(f"student alone: {trainer.compute_objective.label} {100 * value:.2f} % in {seconds:.0f} s")
        return {"objective": value, "seconds": seconds}

    def _train(self, trial) -> float:
        """One trial through the trainer, as transformers' Optuna backend runs it."""
        trainer = self.trainer
        trainer.objective = None
        trainer.train(trial=trial)
        if trainer.objective is None:  # no evaluation during training
            trainer.objective = trainer.compute_objective(trainer.evaluate())
        return trainer.objective

    def run_trials(self) -> None:
        """Train trials until the study holds ``n_trials`` (duplicates and interrupted trials not counted)."""
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        in_a_row = 0
        while True:
            self._current = None
            self.rerun_dead_trials()
            trials = self.study.get_trials(deepcopy=False)
            if spent(trials) >= self.config.search.n_trials:
                return
            if in_a_row >= MAX_DUPLICATES_IN_A_ROW:
                self.log(f"stopping: the last {in_a_row} trials drew settings already trained; the space holds no new ones")
                return
            try:
                self.study.optimize(self._objective, n_trials=1, catch=(TrainingError, BadInputError), callbacks=[self._progress])
            except KeyboardInterrupt:
                stopped = self.study.get_trials(deepcopy=False)[self._current.number] if self._current is not None else None
                if stopped is not None and stopped.state == TrialState.FAIL:
                    enqueue_rerun(self.study, stopped)  # Ctrl-C: the same command trains it again
                raise
            last = self.study.get_trials(deepcopy=False)[self._current.number] if self._current is not None else None
            if last is not None and OVER_BUDGET in last.user_attrs:
                return
            in_a_row = in_a_row + 1 if last is not None and DUPLICATE_OF in last.user_attrs else 0

    def rerun_dead_trials(self) -> None:
        """Fail and rerun the RUNNING trials of processes of this machine that no longer exist (kill -9)."""
        host = socket.gethostname()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker_host, _, pid = trial.user_attrs.get(WORKER, "").rpartition(":")
            if worker_host != host or not pid.isdigit() or int(pid) == os.getpid() or process_is_alive(int(pid)):
                continue
            try:
                self.study.tell(trial.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError):
                continue  # another worker got there first
            self.log(f"trial {trial.number} was interrupted (its process {pid} is gone): training its settings again")
            enqueue_rerun(self.study, trial)

    def _objective(self, trial: optuna.Trial) -> float:
        self._current = trial
        trial.set_user_attr(WORKER, worker_name())
        if spent(self.study.get_trials(deepcopy=False), before=trial.number) >= self.config.search.n_trials:
            # Another worker started the last trial of the budget at the same moment.
            trial.set_user_attr(OVER_BUDGET, True)
            raise optuna.TrialPruned()
        settings = self.space(trial)
        key = settings_key(settings)
        trial.set_user_attr(SETTINGS_KEY, key)
        earlier = same_settings(self.study.get_trials(deepcopy=False), key, trial.number)
        if earlier is not None:
            trial.set_user_attr(DUPLICATE_OF, earlier.number)
            trial.set_user_attr(SECONDS, 0.0)
            if earlier.state == TrialState.COMPLETE:
                return earlier.value
            raise optuna.TrialPruned()  # the same settings are training elsewhere, were pruned or failed
        start = time.perf_counter()
        try:
            return self._train(trial)
        except (TrainingError, BadInputError) as error:
            trial.set_user_attr(ERROR, " ".join(str(error).split())[:500])
            raise
        except optuna.TrialPruned:
            # The trainer recorded the stop as a failure; the trial's folder says what it was.
            record = {key: value for key, value in self.trainer.run_record.items() if key != "error"}
            write_record(self.trainer._get_output_dir(trial), {**record, "status": "pruned", "pruned_at_epoch": self.trainer.state.epoch})
            raise
        finally:
            trial.set_user_attr(SECONDS, time.perf_counter() - start - self.trainer.search_prompt_seconds)
            if self.trainer.search_prompt_seconds:
                trial.set_user_attr("prompt_seconds", self.trainer.search_prompt_seconds)
            trial.set_user_attr(EPOCHS, float(self.trainer.state.epoch or 0.0))

    def _progress(self, study: optuna.Study, trial) -> None:
        """One line per finished trial, with the best so far."""
        from .report import trial_line

        if OVER_BUDGET in trial.user_attrs:
            return
        trials = study.get_trials(deepcopy=False)
        self.log(trial_line(trial, self.space, trials, self.config.search.n_trials, self.trainer.compute_objective.label))


def spent(trials, before: int | None = None) -> int:
    """Trials counted against ``n_trials`` (see :func:`counted`), those numbered below ``before`` when given."""
    interrupted = interrupted_numbers(trials)
    return sum(1 for t in trials if counted(t, interrupted) and (before is None or t.number < before))


def same_settings(trials, key: str, number: int):
    """The earliest other trial trained (or training) with the same settings, or None."""
    interrupted = interrupted_numbers(trials)
    for trial in trials:
        if trial.number != number and trial.user_attrs.get(SETTINGS_KEY) == key and counted(trial, interrupted):
            return trial
    return None


def corner_options(name: str, specs) -> list[dict[str, Any]]:
    """A candidate's options at the low ends, at the high ends, and at each choice (the others low),
    the combinations its options' own validation accepts."""
    from ..errors import MethodOptionsError
    from ..methods.registry import get_method_class
    from .prompts import complete_options

    firsts = {option: spec.test_values()[0] for option, spec in specs.items()}
    lasts = {option: spec.test_values()[-1] for option, spec in specs.items()}
    corners = [firsts, lasts]
    corners += [{**firsts, option: value} for option, spec in specs.items() if isinstance(spec, Choice) for value in spec.choices[1:]]
    valid, seen = [], set()
    for options in corners:
        text = json.dumps(options, sort_keys=True, default=str)
        if text in seen:
            continue
        seen.add(text)
        try:
            complete_options(name, get_method_class(name).options_class, dict(options))
        except MethodOptionsError:
            continue
        valid.append(options)
    return valid or [firsts]


def _options_words(options: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in options.items()) or "its defaults"


def load_validation_split(args, model_args, data_args):
    """The run's data with its validation split carved from train; refused when that leaves no rows."""
    from ..run import load_run_data
    from ..run import logger as run_logger

    level = run_logger.level
    run_logger.setLevel(logging.ERROR)  # its warning that the dataset's own evaluation split is unused is the point here
    try:
        data = load_run_data(args, model_args, data_args)
    except BadInputError:
        raise
    except ValueError as error:  # datasets' split: a fraction below one row, fewer rows than classes
        raise ConfigError(
            f"validation_fraction = {data_args.validation_fraction} leaves no usable validation split of the training split "
            f"({' '.join(str(error).split())}); raise validation_fraction or use more training rows"
        ) from None
    finally:
        run_logger.setLevel(level)
    if data.eval is None or len(data.eval) == 0 or len(data.train) == 0:
        raise ConfigError(
            f"validation_fraction = {data_args.validation_fraction} leaves {0 if data.eval is None else len(data.eval)} validation "
            f"and {len(data.train)} training rows; both need rows: raise validation_fraction or max_eval_samples"
        )
    return data


# ----------------------------------------------------------------------------------------------
# The command


def run_tune(config: TuneConfig, log=print) -> TuneResult:
    """Check everything, then search (``search.workers`` processes sharing the study), then report."""
    if config.search.backend == "ray":
        from .ray_backend import run_ray_search

        return run_ray_search(config, log)
    from .report import write_study_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuner = Tuner(config, log)
    given_storage = tuner.storage_url
    if given_storage is not None:
        open_storage(given_storage)  # an unreachable URL is refused before the data and models load
    with removed_if_new(config.output_dir):
        tuner.prepare()
        tuner.open_study()
    study = tuner.study
    seconds = tuner.build_teacher_cache()
    if seconds is not None:
        study.set_user_attr("teacher_cache_seconds", seconds)
    if config.search.student_alone and STUDENT_ALONE not in study.user_attrs:
        study.set_user_attr(STUDENT_ALONE, tuner.run_student_alone())
    try:
        if config.search.workers == 1:
            tuner.run_trials()
        else:
            run_workers(config, tuner.storage_url, config.search.workers, log)
    except KeyboardInterrupt:
        log("interrupted: run the same command to continue the study (a trial stopped half-way is trained again)")
        raise KeyboardInterrupt from None  # the command's message: not a run to resume from a checkpoint
    return write_study_report(tuner)


@contextlib.contextmanager
def removed_if_new(folder: Path):
    """Remove ``folder`` when the block created it and failed (a refused config leaves nothing behind)."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise


def run_workers(config: TuneConfig, storage_url: str, workers: int, log) -> None:
    """``workers`` processes of this machine run trials of the study side by side, each on its share of the cores."""
    if config.source is None:
        raise ConfigError("workers read the tune config from its file: give the search a config file (--config) to run several workers")
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    processes = [
        context.Process(target=_worker_main, args=(config.source, config.overrides, storage_url, threads), name=f"tune-worker-{i}")
        for i in range(workers)
    ]
    log(f"{workers} workers share the study ({threads} thread(s) each)")
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.join()
        raise
    failed = [p for p in processes if p.exitcode != 0]
    if failed:
        codes = ", ".join(f"{p.name}: {p.exitcode}" for p in failed)
        if all(p.exitcode == 130 for p in failed):
            raise KeyboardInterrupt
        raise TrainingError(f"{len(failed)} worker(s) failed ({codes}); their errors are above. Run the same command to continue the study")


def _worker_main(source: str | None, overrides: list[str], storage_url: str, threads: int) -> None:
    import sys

    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=os.environ.get("HF_FREQKD_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        config = load_tune_config(source, overrides, storage=storage_url)
        tuner = Tuner(config, log=lambda line: print(line, flush=True))
        tuner.prepare(check_candidates=False)
        tuner.open_study(create=False)
        if tuner.trainer.search_teacher_cache is not None:
            tuner.trainer.search_teacher_cache.layers = tuner.study.user_attrs.get("teacher_cache_layers")
        tuner.run_trials()
    except KeyboardInterrupt:
        sys.exit(130)
    except (BadInputError, TrainingError) as error:
        print(f"hf-freqkd tune worker {os.getpid()}: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        sys.exit(1)


"""``hf-freqkd benchmark quality``: one teacher, every listed method on the same student, data,
schedule and seeds; the task's metrics (top-1 / top-5 accuracy, mIoU, mAP) mean +- std, parameter
counts and wall time.

A benchmark config (``configs/bench/*.yaml``) holds::

    name: digits                     # title of the table and chart
    output_dir: runs/bench/digits
    seeds: [0, 1, 2]                 # every method runs once per seed
    common: {...}                    # run config keys shared by the teacher and every student run
    teacher: {...}                   # the teacher's cross-entropy run (student_model = the teacher's
                                     # architecture), or {model: <exported teacher folder>} to skip it
    student: {...}                   # run config keys of every student run (student_model, epochs, ...)
    methods:                         # label -> the run's ``methods`` mapping, or
      ce: {ce: {}}                   #   {methods: {...}, <other run config keys for this label>}
      kd: {ce: {weight: 0.1}, kd: {weight: 0.9}}
      dkd: {methods: {ce: {}, dkd: {}}, distill_warmup_epochs: 5}

"Run config keys" are those of ``hf-freqkd distill`` configs. A method using ``freekd`` with
prompts gets its stage 1 (``fit-prompts``) run once, on the teacher, before the first run of any
label; the benchmark sets ``methods.freekd.prompts_path``.

``teacher_cache:`` (``none`` by default) lets runs read the teacher's outputs instead of running it
(:mod:`hf_freqkd.teacher_cache`): with ``logits``, every run whose methods read only the teacher's
logits (kd, dkd, figkd) reads one cache per data seed (``output_dir/teacher_cache/seed<s>/logits``),
shared across those methods (and across seeds when ``common`` sets ``data_seed``: the seeds then
vary the initialisation only); with ``all``, every run that uses a teacher reads one cache per data
seed (``.../seed<s>/shared``) holding the logits and the union of the teacher layers its labels read
(:func:`shared_cache_layers`), except a label that overrides more than its methods, which draws
other views and gets its own (``.../seed<s>/<label>``). Each cache is built once, before the first
run that reads it, and its build time is reported apart from the runs'.

A label is free text, so a sweep of one method's options is a list of labels, one row each in the
table, CSV and chart (``configs/bench/figkd_ablation_digits.yaml``)::

    "figkd levels=2": {ce: {}, figkd: {levels: 2}}
    "figkd bands=low": {ce: {}, figkd: {bands: low}}

The metrics are the task's (``task:`` in ``common``, classification when unset), declared by its
``benchmark_metrics`` (hf_freqkd/tasks/): top-1 and top-5 accuracy (CSV columns ``top1``, ``top5``)
for classification, mIoU and pixel accuracy (``miou``, ``pixel_accuracy``) for segmentation, COCO
mAP and AP50 (``map``, ``ap50``) for detection. The CSV and ``bench_result.json`` hold the fractions
the runs reported, with ``nan`` where a metric is missing or undefined (COCO's -1: an AP with no
object to score); the table and chart show percent. The first metric is the headline: its
"top-1 vs ce" ("mAP vs ce", ...) column compares each label with the first label whose methods are
``ce`` alone (the student trained without a teacher), whatever that label is called.

``results.md`` records the command as run (``--output-dir`` and ``key=value`` overrides
included). The config's ``description`` is prose written for the config's own settings; when
overrides changed any of them, the table lists each changed key with the config's value and the
value run (``student.num_train_epochs: 30 -> 5``) right under the description. With one seed a
cell shows the value and ``(n=1)``: there is no standard deviation to report.

Everything is validated before anything trains or is written: unknown keys, unknown method names
and bad options fail at once, naming the value, and so do the datasets, models, checkpoints and
output folder of every run (:func:`check_run_inputs`). Each run's folder gets its resolved ``config.yaml``
(``hf-freqkd distill --config <run>/config.yaml`` repeats it) and a ``bench_result.json``; a rerun
of the benchmark reuses finished runs whose config is unchanged, so an interrupted benchmark
continues where it stopped. Results: ``results.md`` (table), ``results.csv`` (every run),
``results.png`` (bar chart, mean +- std with each seed as a dot) and ``results.json``.
"""

from __future__ import annotations

import copy
import csv
import difflib
import json
import math
import re
import shlex
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import apply_overrides, parse_config, read_yaml_config
from ..errors import BadInputError, ConfigError, MethodOptionsError, MissingPathError
from ..tasks import Task, get_task

BENCH_KEYS = ("name", "description", "output_dir", "seeds", "common", "teacher", "student", "methods", "teacher_cache")
#: ``teacher_cache:`` of a benchmark: which runs read cached teacher outputs (see the module docstring)
TEACHER_CACHE_MODES = ("none", "logits", "all")
#: run config keys the benchmark sets itself when it caches the teacher
_CACHE_KEYS = ("teacher_cache", "teacher_cache_features", "teacher_cache_layers")
#: folder name of the per-data-seed cache every sharing label reads under ``teacher_cache: all``
SHARED_CACHE = "shared"
#: methods drawn in colour in the chart (the frequency-domain ones); the rest are baselines
FREQUENCY_METHODS = ("figkd", "fam", "fam_l2l", "freekd")
RESULT_FILE = "bench_result.json"
TEACHER_DIR = "teacher"
#: the base method of every distillation; a label running it alone is the student-alone baseline
BASELINE_METHOD = "ce"


@dataclass(frozen=True)
class ReportedMetric:
    """One metric of the table, CSV, JSON and chart: the run's ``eval_<key>``, a fraction shown in percent."""

    key: str
    label: str

    @property
    def column(self) -> str:
        """The CSV / JSON name: "top-1" -> top1, "pixel accuracy" -> pixel_accuracy, "AP50" -> ap50."""
        return re.sub(r"[^0-9a-z]+", "_", self.label.lower().replace("-", "")).strip("_")


def reported_metrics(task: Task) -> list[ReportedMetric]:
    """The metrics a benchmark of ``task`` reports (its ``benchmark_metrics``), the headline first."""
    return [ReportedMetric(key, label) for key, label in task.benchmark_metrics]


def metric_values(metrics: list[ReportedMetric], eval_metrics: dict[str, float]) -> dict[str, float]:
    """Column -> the run's ``eval_<key>``; nan when the run did not report it or reported it undefined (-1)."""
    values = {}
    for metric in metrics:
        value = eval_metrics.get(f"eval_{metric.key}")
        values[metric.column] = float("nan") if value is None or value < 0 else float(value)
    return values


@dataclass
class MethodRun:
    """One benchmark label: its run-config overrides (``methods`` and any other keys)."""

    label: str
    overrides: dict[str, Any]
    folder: str

    @property
    def method_names(self) -> list[str]:
        return list(self.overrides["methods"])

    def _method_classes(self) -> list:
        from ..methods.registry import get_method_class

        return [get_method_class(name) for name in self.method_names]

    @property
    def uses_teacher(self) -> bool:
        return any(cls.uses_teacher for cls in self._method_classes())

    @property
    def reads_teacher_features(self) -> bool:
        """True when a method of this label reads teacher features (it has its own ``feature_request``), not only logits."""
        from ..methods.base import DistillationMethod

        return any(cls.uses_teacher and cls.feature_request is not DistillationMethod.feature_request for cls in self._method_classes())

    @property
    def shares_teacher_cache(self) -> bool:
        """True when the label changes nothing but the methods: its runs draw the same views as every
        other such label's, so under ``teacher_cache: all`` they read one cache per data seed."""
        return set(self.overrides) == {"methods"}

    @property
    def needs_prompts(self) -> bool:
        freekd = self.overrides["methods"].get("freekd")
        return freekd is not None and (freekd or {}).get("masks", "prompts") == "prompts"


@dataclass
class BenchmarkConfig:
    name: str
    output_dir: Path
    seeds: list[int]
    common: dict[str, Any]
    teacher: dict[str, Any]
    student: dict[str, Any]
    methods: list[MethodRun]
    description: str = ""
    source: str | None = None
    #: which runs read a teacher cache: none, logits or all (TEACHER_CACHE_MODES)
    teacher_cache: str = "none"
    #: ``hf-freqkd benchmark quality`` arguments that produced this config, for results.md
    command: list[str] = field(default_factory=list)
    #: overridden key -> (the config file's value, the value run), only keys whose value changed
    changed_by_overrides: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    #: teacher layers the shared per-seed cache stores (``teacher_cache: all``): the union of those the
    #: sharing labels read, found by :func:`shared_cache_layers` before the first run
    shared_cache_layers: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> MethodRun | None:
        """The first label that trains the student alone (``ce`` only): the reference of the "<headline> vs ce" column."""
        return next((m for m in self.methods if m.method_names == [BASELINE_METHOD]), None)

    @property
    def task(self) -> Task:
        """The task every run solves (``task:`` in ``common`` or ``student``; classification when unset)."""
        return get_task({**self.common, **self.student}.get("task") or "classification")

    @property
    def metrics(self) -> list[ReportedMetric]:
        return reported_metrics(self.task)

    @property
    def teacher_model(self) -> str | None:
        """An existing exported teacher named by ``teacher.model``; None when the benchmark trains it."""
        return self.teacher.get("model")

    def teacher_dir(self) -> Path:
        return Path(self.teacher_model) if self.teacher_model else self.output_dir / TEACHER_DIR / "student"

    def teacher_run_config(self) -> dict[str, Any]:
        values = {**self.common, **self.teacher, "methods": {"ce": {}}, "output_dir": str(self.output_dir / TEACHER_DIR)}
        return {**values, "seed": self.seeds[0]}

    def run_folder(self, method: MethodRun, seed: int) -> Path:
        return self.output_dir / "runs" / method.folder / f"seed{seed}"

    def prompts_path(self, method: MethodRun) -> Path:
        return self.output_dir / "runs" / method.folder / "prompts.safetensors"

    def student_run_config(self, method: MethodRun, seed: int) -> dict[str, Any]:
        values = copy.deepcopy({**self.common, **self.student, **method.overrides})
        values["seed"] = seed
        values["output_dir"] = str(self.run_folder(method, seed))
        if any(name != "ce" for name in values["methods"]):
            values["teacher_model"] = str(self.teacher_dir())
        if method.needs_prompts:
            values["methods"]["freekd"] = {**(values["methods"]["freekd"] or {}), "prompts_path": str(self.prompts_path(method))}
        cache = self.teacher_cache_folder(method, values.get("data_seed", seed))
        if cache is not None:
            values["teacher_cache"] = str(cache)
            if method.reads_teacher_features:
                values["teacher_cache_features"] = True
            if cache.name == SHARED_CACHE and self.shared_cache_layers:
                values["teacher_cache_layers"] = list(self.shared_cache_layers)
        return values

    def teacher_cache_folder(self, method: MethodRun, data_seed: int) -> Path | None:
        """The cache a run of ``method`` reads, or None when it runs the teacher online. Caches are
        per data seed (the run's ``data_seed``, else its seed: what draws the views), so with
        ``data_seed`` set in ``common`` every seed shares them."""
        if self.teacher_cache == "none" or not method.uses_teacher:
            return None
        seed_folder = self.output_dir / "teacher_cache" / f"seed{data_seed}"
        if self.teacher_cache == "all" and method.shares_teacher_cache:
            return seed_folder / SHARED_CACHE
        if not method.reads_teacher_features:
            return seed_folder / "logits"
        return seed_folder / method.folder if self.teacher_cache == "all" else None

    def prompts_run_config(self, method: MethodRun) -> dict[str, Any]:
        values = self.student_run_config(method, self.seeds[0])
        values["output_dir"] = str(self.output_dir / "runs" / method.folder / "prompts")
        for key in _CACHE_KEYS:  # stage 1 runs the teacher with prompts: no cache applies
            values.pop(key, None)
        return values


def shared_cache_layers(config: BenchmarkConfig) -> list[str]:
    """The teacher layers read by the labels that share the per-seed cache, in first-use order: each
    such label's trainer is built (data, models, methods; nothing trained or written) and asked."""
    from ..run import prepare_run

    layers: list[str] = []
    for method in config.methods:
        if not (method.uses_teacher and method.shares_teacher_cache and method.reads_teacher_features):
            continue
        values = config.student_run_config(method, config.seeds[0])
        for key in _CACHE_KEYS:
            values.pop(key, None)
        with tempfile.TemporaryDirectory() as scratch:  # transformers' Trainer makes output_dir when built
            values["output_dir"] = str(Path(scratch) / "run")
            trainer, *_ = prepare_run("distill", defaults=values, check_output=False)
            layers += [name for name in trainer.teacher.layers if name not in layers]
            del trainer
    return layers


# ----------------------------------------------------------------------------------------------
# Config


def load_benchmark_config(path: str | Path, overrides: list[str] | None = None, output_dir: str | None = None) -> BenchmarkConfig:
    """Read, override (``seeds=[0]``, ``student.num_train_epochs=2``) and validate a benchmark config."""
    overrides = list(overrides or [])
    written = read_yaml_config(path)
    values = _apply_bench_overrides(written, overrides)
    if output_dir is not None:
        values["output_dir"] = output_dir
    config = benchmark_config_from_dict(values, source=str(path))
    config.command = ["hf-freqkd", "benchmark", "quality", "--config", str(path)]
    config.command += (["--output-dir", output_dir] if output_dir is not None else []) + overrides
    config.changed_by_overrides = _changed_by_overrides(written, values, overrides)
    validate_runs(config)
    return config


_NOT_SET = "(not set)"


def _lookup(values: dict[str, Any], dotted_key: str) -> Any:
    for part in dotted_key.split("."):
        if not isinstance(values, dict) or part not in values:
            return _NOT_SET
        values = values[part]
    return values


def _changed_by_overrides(
    written: dict[str, Any], run: dict[str, Any], overrides: list[str]
) -> dict[str, tuple[Any, Any]]:
    # Keyed as the user typed them (leading dashes dropped, as apply_overrides does); the last one wins.
    changed = {}
    for override in overrides:
        key = override.partition("=")[0].strip().lstrip("-")
        before, after = _lookup(written, key), _lookup(run, key)
        if before != after:
            changed[key] = (before, after)
    return changed


def _apply_bench_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    # config.apply_overrides treats a top-level "methods" as a run's methods; a benchmark's are labels.
    values = dict(values)
    methods = values.pop("methods", None)
    method_overrides = [o for o in overrides if o.strip().startswith("methods.")]
    values = apply_overrides(values, [o for o in overrides if o not in method_overrides])
    if method_overrides:
        nested = apply_overrides({"bench_methods": methods or {}}, [o.replace("methods.", "bench_methods.", 1) for o in method_overrides])
        methods = nested["bench_methods"]
    if methods is not None:
        values["methods"] = methods
    return values


def benchmark_config_from_dict(values: dict[str, Any], source: str | None = None) -> BenchmarkConfig:
    where = f"benchmark config '{source}'" if source else "benchmark config"
    unknown = [key for key in values if key not in BENCH_KEYS]
    if unknown:
        hints = [f"'{k}'" + (f" (did you mean {', '.join(difflib.get_close_matches(k, BENCH_KEYS, n=2))}?)" if difflib.get_close_matches(k, BENCH_KEYS, n=2) else "") for k in unknown]
        raise ConfigError(f"{where}: unknown key {', '.join(hints)}; expected keys: {', '.join(BENCH_KEYS)}")
    for key in ("output_dir", "methods", "student"):
        if not values.get(key):
            raise ConfigError(f"{where}: '{key}' is missing or empty")
    seeds = values.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds = {seeds!r} is invalid: expected a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds = {seeds!r} lists a seed twice")
    sections = {}
    for key in ("common", "teacher", "student"):
        section = values.get(key) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: '{key}' = {section!r} is invalid: expected a mapping of run config keys")
        for reserved in ("output_dir", "seed", "methods", "teacher_model", *_CACHE_KEYS):
            if reserved in section:
                raise ConfigError(f"{where}: '{key}.{reserved}' is set by the benchmark; remove it (see hf_freqkd/benchmark/quality.py)")
        sections[key] = dict(section)
    teacher_keys = set(sections["teacher"]) - {"model"}
    if "model" in sections["teacher"] and teacher_keys:
        raise ConfigError(
            f"{where}: teacher.model names an exported teacher, so the teacher is not trained; remove teacher.{', teacher.'.join(sorted(teacher_keys))}"
        )
    if "model" not in sections["teacher"] and "student_model" not in sections["teacher"]:
        raise ConfigError(f"{where}: set teacher.student_model (the architecture to train as teacher) or teacher.model (an exported teacher folder)")
    teacher_cache = values.get("teacher_cache", "none")
    if teacher_cache not in TEACHER_CACHE_MODES:
        raise ConfigError(f"{where}: teacher_cache = {teacher_cache!r} is invalid: expected one of {', '.join(TEACHER_CACHE_MODES)}")
    if not isinstance(values["methods"], dict):
        raise ConfigError(f"{where}: methods = {values['methods']!r} is invalid: expected a mapping of label -> methods")
    methods, folders = [], {}
    for label, entry in values["methods"].items():
        method = _method_run(str(label), entry, where)
        if method.folder in folders:
            raise ConfigError(f"{where}: method labels '{folders[method.folder]}' and '{label}' map to the same folder name '{method.folder}'")
        folders[method.folder] = label
        methods.append(method)
    return BenchmarkConfig(
        name=str(values.get("name") or Path(source or "benchmark").stem),
        description=str(values.get("description") or ""),
        output_dir=Path(values["output_dir"]),
        seeds=list(seeds),
        common=sections["common"],
        teacher=sections["teacher"],
        student=sections["student"],
        methods=methods,
        source=source,
        teacher_cache=teacher_cache,
    )


def _method_run(label: str, entry: Any, where: str) -> MethodRun:
    from ..methods.registry import normalize_method_specs

    if entry is None or isinstance(entry, (list, str)):
        entry = {"methods": entry if entry is not None else {label: {}}}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: methods.{label} = {entry!r} is invalid: expected a methods mapping or {{methods: ..., <run keys>}}")
    overrides = dict(entry) if "methods" in entry else {"methods": dict(entry)}
    try:
        overrides["methods"] = normalize_method_specs(overrides["methods"])
    except ValueError as error:
        raise MethodOptionsError(f"{where}: methods.{label}: {error}") from None
    if not overrides["methods"]:
        raise ConfigError(f"{where}: methods.{label} lists no method")
    for reserved in ("output_dir", "seed", "teacher_model", *_CACHE_KEYS):
        if reserved in overrides:
            raise ConfigError(f"{where}: methods.{label}.{reserved} is set by the benchmark; remove it")
    folder = re.sub(r"[^A-Za-z0-9_.+-]+", "_", label).strip("_") or "method"
    return MethodRun(label=label, overrides=overrides, folder=folder)


def _first_seed_runs(config: BenchmarkConfig) -> list[tuple[str, dict[str, Any]]]:
    """(what, run config) of the teacher's run and of each label at the first seed: every setting the benchmark's runs differ in."""
    runs = [] if config.teacher_model else [("teacher", config.teacher_run_config())]
    return runs + [(f"method '{m.label}'", config.student_run_config(m, config.seeds[0])) for m in config.methods]


def validate_runs(config: BenchmarkConfig) -> None:
    """Parse every run's config (teacher, each label at the first seed) so bad keys fail before training."""
    runs = _first_seed_runs(config)
    for what, values in runs:
        try:
            parse_config(None, None, defaults=values)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"benchmark '{config.name}', {what}: {error}") from None
    # One table compares every run on one task's metrics: a run of another task would have none of them.
    task = config.task
    for what, values in runs:
        if (values.get("task") or "classification") != task.name:
            raise ConfigError(
                f"benchmark '{config.name}', {what}: task = {values.get('task')!r} but the students' task is '{task.name}'; "
                "set task once, in common"
            )
    if not task.benchmark_metrics:
        raise ConfigError(f"benchmark '{config.name}': the task '{task.name}' declares no benchmark_metrics to report")
    if config.teacher_model and not Path(config.teacher_model).is_dir():
        raise MissingPathError(f"teacher.model '{config.teacher_model}' is not a folder (expected an exported teacher, e.g. <run>/student)")


def check_run_inputs(config: BenchmarkConfig) -> None:
    """Every output folder, dataset, model and checkpoint the benchmark's runs name, checked before its
    first file is written and its teacher trains: a bad dataset in the last label's overrides fails
    now, not after the runs before it. Each distinct data setting is loaded and checked as its runs
    load it (splits, columns, labels); models and checkpoints are resolved without being built."""
    from ..models.loading import check_model_source, checkpoint_file
    from ..output_dir import check_output_path, held_run_outputs
    from ..run import load_run_data

    check_output_path(config.output_dir, "output_dir")
    held = held_run_outputs(config.output_dir)
    if held:
        raise ConfigError(
            f"benchmark '{config.name}': output_dir '{config.output_dir}' holds a training run ({', '.join(held)}), "
            "not a benchmark's results; choose another output_dir"
        )
    # The teacher this benchmark trains does not exist yet; its architecture is checked as the teacher run's model.
    teacher_to_train = None if config.teacher_model else str(config.teacher_dir())
    checked_data = set()
    for what, values in _first_seed_runs(config):
        try:
            args, model_args, data_args = parse_config(None, None, defaults=values)
            for model in (model_args.student_model, args.teacher_model):
                if model and model != teacher_to_train:
                    check_model_source(model)
            for checkpoint in (model_args.student_checkpoint, args.teacher_checkpoint):
                if checkpoint:
                    checkpoint_file(checkpoint)
            data_setting = json.dumps([asdict(data_args), model_args.num_classes, args.trust_remote_code], default=str)
            if data_setting not in checked_data:
                load_run_data(args, model_args, data_args)
                checked_data.add(data_setting)
        except BadInputError as error:
            raise type(error)(f"benchmark '{config.name}', {what}: {error}") from None
    _check_earlier_results(config)


def _check_earlier_results(config: BenchmarkConfig) -> None:
    """A run folder holding another config's result is refused before the first run, not when its turn comes."""
    runs = [] if config.teacher_model else [config.teacher_run_config()]
    for method in config.methods:
        if method.needs_prompts:
            runs.append(config.prompts_run_config(method))
        for seed in config.seeds:
            values = config.student_run_config(method, seed)
            # A run reading the shared cache gets its teacher layers once they are found: checked when it runs.
            if Path(values.get("teacher_cache") or "").name != SHARED_CACHE:
                runs.append(values)
    for values in runs:
        _cached(Path(values["output_dir"]), values)


# ----------------------------------------------------------------------------------------------
# Running


@dataclass
class BenchmarkResult:
    config: BenchmarkConfig
    rows: list[dict[str, Any]]
    teacher: dict[str, Any]
    prompt_seconds: dict[str, float] = field(default_factory=dict)
    #: cache folder -> seconds its build took (caches built by this invocation only)
    cache_seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def _write_yaml(path: Path, values: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def _cached(folder: Path, values: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result of a finished run with the same config; an error if the folder holds another config's."""
    record_path = folder / RESULT_FILE
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    if record.get("config") != json.loads(json.dumps(values, default=str)):
        raise ConfigError(
            f"'{folder}' holds the result of a run with a different config; remove it (or the benchmark's output_dir) to rerun"
        )
    return record


def _store(folder: Path, values: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    record = {**result, "config": json.loads(json.dumps(values, default=str))}
    (folder / RESULT_FILE).write_text(json.dumps(record, indent=2))
    return record


def _run_training(mode: str, values: dict[str, Any], metrics: list[ReportedMetric], log) -> dict[str, Any]:
    from ..run import run

    folder = Path(values["output_dir"])
    cached = _cached(folder, values)
    if cached is not None:
        log(f"  reusing {folder} (finished earlier)")
        return cached
    config_path = _write_yaml(folder / "config.yaml", values)
    start = time.perf_counter()
    result = run(mode, str(config_path))
    seconds = time.perf_counter() - start
    return _store(
        folder,
        values,
        {
            **metric_values(metrics, result.metrics),
            "student_parameters": result.student_parameters,
            "method_parameters": result.method_parameters,
            "teacher_parameters": result.teacher_parameters,
            "train_seconds": result.train_seconds,
            "seconds": seconds,
        },
    )


def _fit_prompts(config: BenchmarkConfig, method: MethodRun, log) -> float:
    from ..prompt_fitting import run_fit_prompts

    values = config.prompts_run_config(method)
    folder = Path(values["output_dir"])
    cached = _cached(folder, values)
    if cached is not None and config.prompts_path(method).is_file():
        log(f"  reusing prompts {config.prompts_path(method)}")
        return cached["seconds"]
    config_path = _write_yaml(folder / "config.yaml", values)
    start = time.perf_counter()
    result = run_fit_prompts(str(config_path))
    seconds = time.perf_counter() - start
    log("  " + result.summary().replace("\n", "\n  "))
    _store(folder, values, {"seconds": seconds})
    return seconds


def _build_teacher_cache(values: dict[str, Any], log) -> float:
    """Build the teacher cache a run reads (its config's ``teacher_cache``) before the run; seconds it took."""
    from ..run import run_cache_teacher

    config_path = _write_yaml(Path(values["output_dir"]) / "config.yaml", values)
    start = time.perf_counter()
    cache = run_cache_teacher(str(config_path))
    seconds = time.perf_counter() - start
    log(f"  teacher cache {cache.path}: {cache.identity.epochs} epoch(s) x {cache.rows} rows ({seconds:.0f} s)")
    return seconds


def run_quality_benchmark(config: BenchmarkConfig, log=print) -> BenchmarkResult:
    """Check every run's inputs (:func:`check_run_inputs`), train (or load) the teacher, run every
    method for every seed, write the table, CSV and chart."""
    check_run_inputs(config)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    metrics = config.metrics
    headline = metrics[0]
    if config.teacher_model:
        not_measured = {metric.column: float("nan") for metric in metrics}
        teacher = {**not_measured, "student_parameters": _count_parameters(config.teacher_dir()), "seconds": 0.0}
        log(f"teacher: {config.teacher_model} (loaded, not trained)")
    else:
        log(f"teacher: training {config.teacher['student_model']}")
        teacher = _run_training("teacher", config.teacher_run_config(), metrics, log)
        log(f"teacher: {headline.label} {100 * teacher[headline.column]:.2f} % ({teacher['seconds']:.0f} s)")
    num_classes = _num_classes(config.teacher_dir())

    rows, prompt_seconds, cache_seconds = [], {}, {}
    # Stage 1 of every FreeKD label first: a label's trainer (built to list the shared cache's layers) loads its prompts.
    for method in config.methods:
        if method.needs_prompts:
            log(f"{method.label}: fitting FreeKD prompts on the teacher (stage 1)")
            prompt_seconds[method.label] = _fit_prompts(config, method, log)
    if config.teacher_cache == "all":
        config.shared_cache_layers = shared_cache_layers(config)
        log(f"teacher cache: one per data seed, logits and teacher layers {', '.join(config.shared_cache_layers) or 'none'}")
    for method in config.methods:
        for seed in config.seeds:
            values = config.student_run_config(method, seed)
            cache = values.get("teacher_cache")
            if cache is not None and cache not in cache_seconds and _cached(Path(values["output_dir"]), values) is None:
                cache_seconds[cache] = _build_teacher_cache(values, log)
            record = _run_training("distill", values, metrics, log)
            rows.append({"method": method.label, "seed": seed, **{k: v for k, v in record.items() if k != "config"}})
            log(f"{method.label} seed {seed}: {headline.label} {100 * record[headline.column]:.2f} % ({record['seconds']:.0f} s)")

    result = BenchmarkResult(config=config, rows=rows, teacher=teacher, prompt_seconds=prompt_seconds, cache_seconds=cache_seconds)
    summary = summarise(rows, [m.label for m in config.methods], metrics)
    # The table and chart leave out what the task says is meaningless here (top-5 of 5 classes);
    # the CSV and JSON keep every metric.
    shown = [headline] + [metric for metric in metrics[1:] if config.task.benchmark_shows(metric.key, num_classes)]
    files = {
        "csv": write_csv(rows, config.output_dir / "results.csv", metrics),
        "markdown": config.output_dir / "results.md",
        "png": plot_results(summary, config, teacher, shown, config.output_dir / "results.png"),
        "json": config.output_dir / "results.json",
    }
    table = markdown_report(summary, config, teacher, shown, num_classes, prompt_seconds, time.perf_counter() - started, cache_seconds)
    files["markdown"].write_text(table + "\n")
    report = {
        "name": config.name,
        "task": config.task.name,
        "metrics": [{"key": f"eval_{m.key}", "label": m.label, "column": m.column} for m in metrics],
        "num_classes": num_classes,
        "teacher": teacher,
        "summary": summary,
        "runs": rows,
    }
    files["json"].write_text(json.dumps(report, indent=2, default=str))
    result.files = {k: str(v) for k, v in files.items()}
    log(table)
    return result


def _num_classes(model_dir: Path) -> int:
    from ..models.loading import load_model, model_num_classes

    return model_num_classes(load_model(str(model_dir)))


def _count_parameters(model_dir: Path) -> int:
    from ..models.loading import load_model

    return sum(p.numel() for p in load_model(str(model_dir)).parameters())


# ----------------------------------------------------------------------------------------------
# Reporting


def _mean_std(values: list[float]) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation and count of the finite values; the deviation is None for one value."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), None, 0
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def summarise(rows: list[dict[str, Any]], labels: list[str], metrics: list[ReportedMetric]) -> list[dict[str, Any]]:
    """Per label and metric: ``<column>_mean``, ``_std`` (sample, n - 1; None for one seed) and ``_n`` over
    seeds, in percent; the headline (first) metric also lists each seed's value (``<column>_values``)."""
    summary = []
    for label in labels:
        runs = [row for row in rows if row["method"] == label]
        entry = {"method": label, "runs": len(runs)}
        for index, metric in enumerate(metrics):
            values = [100 * r[metric.column] for r in runs]
            mean, std, count = _mean_std(values)
            entry.update({f"{metric.column}_mean": mean, f"{metric.column}_std": std, f"{metric.column}_n": count})
            if index == 0:
                entry[f"{metric.column}_values"] = values
        entry.update(
            {
                "student_parameters": runs[0]["student_parameters"] if runs else 0,
                "method_parameters": runs[0]["method_parameters"] if runs else 0,
                "seconds_mean": statistics.mean(r["seconds"] for r in runs) if runs else float("nan"),
            }
        )
        summary.append(entry)
    return summary


def write_csv(rows: list[dict[str, Any]], path: Path, metrics: list[ReportedMetric]) -> Path:
    fields = ["method", "seed", *(metric.column for metric in metrics)]
    fields += ["student_parameters", "method_parameters", "teacher_parameters", "train_seconds", "seconds"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _mean_std_cell(mean: float, std: float | None, count: int) -> str:
    if count == 0:
        return "n/a"
    return f"{mean:.2f} (n=1)" if std is None else f"{mean:.2f} +- {std:.2f}"


def _percent_cell(fraction: float) -> str:
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:.2f}"


def _config_value(value: Any) -> str:
    return value if value == _NOT_SET else json.dumps(value, default=str)


def _parameters(count: int) -> str:
    return f"{count / 1e6:.3f} M" if count >= 1e5 else f"{count / 1e3:.1f} k" if count else "0"


def markdown_report(
    summary,
    config: BenchmarkConfig,
    teacher: dict[str, Any],
    metrics: list[ReportedMetric],
    num_classes: int,
    prompt_seconds: dict[str, float],
    total_seconds: float,
    cache_seconds: dict[str, float] | None = None,
) -> str:
    """The results table: a column per metric in ``metrics`` (the headline first), then the headline's
    difference to the student alone, parameter counts and wall time."""
    import torch

    student = config.student.get("student_model", "?")
    teacher_name = config.teacher.get("student_model") or _folder_name(config.teacher_model)
    lines = [
        f"### {config.name}: teacher {teacher_name} -> student {student}, {num_classes} classes, seeds {', '.join(map(str, config.seeds))}",
        "",
    ]
    if config.description:
        lines += [config.description.strip(), ""]
    if config.changed_by_overrides:
        # The description is the config's prose; say which of its settings this run replaced.
        changed = config.changed_by_overrides.items()
        changes = "; ".join(f"{key}: {_config_value(old)} -> {_config_value(new)}" for key, (old, new) in changed)
        lines += [f"Overridden for this run (config value -> value run): {changes}.", ""]
    headline = metrics[0].column
    header = "| method |" + "".join(f" {m.label} (%) |" for m in metrics) + f" {metrics[0].label} vs ce | student params | method params | wall time per run (s) |"
    lines += [header, "|---|" + "---:|" * len(metrics) + "---:|---:|---:|---:|"]
    baseline_label = config.baseline.label if config.baseline else None
    baseline = next((s[f"{headline}_mean"] for s in summary if s["method"] == baseline_label), None)
    if not math.isnan(teacher[headline]):
        cells = f"| teacher {teacher_name} |" + "".join(f" {_percent_cell(teacher[m.column])} |" for m in metrics)
        lines.append(cells + f" | {_parameters(teacher['student_parameters'])} | | {teacher['seconds']:.0f} |")
    for s in summary:
        if baseline is None or s["method"] == baseline_label:
            delta = ""
        elif math.isnan(baseline) or math.isnan(s[f"{headline}_mean"]):
            delta = "n/a"
        else:
            delta = f"{s[f'{headline}_mean'] - baseline:+.2f}"
        cells = f"| {s['method']} |" + "".join(
            f" {_mean_std_cell(s[f'{m.column}_mean'], s[f'{m.column}_std'], s[f'{m.column}_n'])} |" for m in metrics
        )
        cells += f" {delta} | {_parameters(s['student_parameters'])} | {_parameters(s['method_parameters'])} | {s['seconds_mean']:.0f} |"
        lines.append(cells)
    if len(config.seeds) == 1:
        spread = f"One run per method (seed {config.seeds[0]}) on the evaluation split, so no standard deviation (n=1)."
    else:
        spread = f"Mean +- sample standard deviation over {len(config.seeds)} seeds on the evaluation split."
    lines += [
        "",
        (
            f"{spread} Method params: trainable "
            "parameters a method adds (dropped at export). Wall time: one run's training and evaluation, "
            f"{torch.get_num_threads()} torch threads; total benchmark time {total_seconds / 60:.1f} min."
        ),
    ]
    for label, seconds in prompt_seconds.items():
        lines.append(f"{label}: FreeKD stage 1 (prompt fitting, once for all seeds) took {seconds:.0f} s more.")
    if cache_seconds:
        lines.append(
            f"Teacher cache ({config.teacher_cache}): {len(cache_seconds)} cache(s) built by this run in {sum(cache_seconds.values()):.0f} s, "
            "not counted in the runs' wall time; the runs that read one did not run the teacher."
        )
    elif config.teacher_cache != "none":
        lines.append(f"Teacher cache ({config.teacher_cache}): every cache was built by an earlier invocation; the runs that read one did not run the teacher.")
    if config.command:
        lines.append(f"Command: `{shlex.join(config.command)}`")
    elif config.source:
        lines.append(f"Command: `hf-freqkd benchmark quality --config {config.source}`")
    return "\n".join(lines)


def _folder_name(path: str) -> str:
    # An exported teacher is usually <run>/student: the run's folder names it.
    folder = Path(path)
    return folder.parent.name if folder.name == "student" and folder.parent.name else folder.name


def plot_results(summary, config: BenchmarkConfig, teacher: dict[str, Any], metrics: list[ReportedMetric], path: Path) -> Path:
    """Bar chart, a panel per metric in ``metrics``: mean +- std per label, each seed of the headline as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    headline = metrics[0].column
    labels = [s["method"] for s in summary]
    methods_of = {m.label: m.method_names for m in config.methods}
    one_seed = len(config.seeds) == 1
    spread = f"one seed ({config.seeds[0]}), no std" if one_seed else f"mean +- std over {len(config.seeds)} seeds"
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 0.5 * len(labels) + 1.8), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        key = metric.column
        means = [s[f"{key}_mean"] for s in summary]
        spreads = [s[f"{key}_std"] or 0.0 for s in summary]
        colors = ["#1f77b4" if set(methods_of[s["method"]]) & set(FREQUENCY_METHODS) else "#9a9a9a" for s in summary]
        positions = list(range(len(labels)))
        axis.barh(positions, means, xerr=spreads, color=colors, capsize=4, alpha=0.85)
        if key == headline:
            for position, s in zip(positions, summary):
                axis.plot(s[f"{key}_values"], [position] * len(s[f"{key}_values"]), "k.", markersize=4)
        teacher_value = 100 * teacher[key]
        if not math.isnan(teacher_value):
            axis.axvline(teacher_value, color="#d62728", linestyle="--", linewidth=1, label=f"teacher {teacher_value:.1f}")
            axis.legend(loc="lower right", fontsize=8)
        # The panels share their rows: labels once, on the left, leave room for long variant names.
        axis.set_yticks(positions, labels if key == headline else [])
        axis.invert_yaxis()
        teacher_line = [] if math.isnan(teacher_value) else [teacher_value]  # in range even when below every student
        lower = [m - s for m, s in zip(means, spreads) if not math.isnan(m)] + teacher_line
        upper = [m + s for m, s in zip(means, spreads) if not math.isnan(m)] + teacher_line
        if lower:
            axis.set_xlim(max(0.0, min(lower) - 5), min(100.0, max(upper) + 3))
        axis.set_xlabel(f"{metric.label} (%), {spread}")
        axis.grid(axis="x", alpha=0.3)
    teacher_name = config.teacher.get("student_model") or _folder_name(config.teacher_model)
    figure.suptitle(f"{config.name}: {config.student.get('student_model', '')} distilled from {teacher_name}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

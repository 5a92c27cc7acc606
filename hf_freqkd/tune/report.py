"""What a search leaves in ``output_dir``, and the line it prints per trial.

* ``trials.csv``: one row per trial (interrupted attempts left out, their reruns in): the method as
  trained (``kd`` for a ``figkd`` with ``bands: all``, searched as figkd), its settings, the
  objective, the state (complete, pruned, failed), the seconds and a note (duplicate of, error,
  pruned after epoch), then one column per searched parameter as sampled.
* ``trials.md``: the same as a table, under the search's summary (best trial, the student alone,
  the cost in student-alone trainings).
* ``trials.png``: the objective of every trial in order, coloured by method, the best so far as a
  line and the student alone as a dashed one; next to it, each parameter's importance (Optuna's
  fANOVA over the finished trials: the share of the objective's variance it explains).
* ``best.yaml``: the best trial as a complete ``hf-freqkd distill`` config that trains on the whole
  training split (``validation_fraction`` removed) and evaluates on the dataset's evaluation split;
  ``best_benchmark.yaml``: it and the student alone over 3 seeds, for ``hf-freqkd benchmark quality``.
"""

from __future__ import annotations

import copy
import csv
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: states as the report names them
STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
#: seeds of the command printed at the end
FINAL_SEEDS = (0, 1, 2)


@dataclass
class TrialRow:
    number: int
    method: str
    settings: dict[str, Any]
    objective: float | None
    state: str
    seconds: float
    searched_as: str | None = None
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def settings_words(self) -> str:
        return " ".join(f"{key}={_short_value(value)}" for key, value in self.settings.items())


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace(" ", "")


def trial_settings_row(number: int, settings, objective, state: str, seconds: float, note: str = "", params=None) -> TrialRow:
    """A trial as the report shows it: the method it trained (``kd`` for a ``figkd`` with ``bands: all``),
    that method's options and the other settings, and ``note`` (with "searched as" when it was reported as another)."""
    from .space import reported_methods

    methods, searched_as = reported_methods(settings["methods"])
    method = next((name for name in reversed(methods) if name != "ce"), "ce")
    shown = {**methods.get(method, {}), **{k: v for k, v in settings.items() if k != "methods"}}
    for name, options in methods.items():  # the searched options of the other methods (ce's weight)
        if name != method:
            shown.update({f"{name}.{k}": v for k, v in options.items() if f"{name}.{k}" in (params or {})})
    notes = [note] if note else []
    if searched_as.get(method):
        notes.insert(0, f"searched as {searched_as[method]}")
    return TrialRow(
        number=number, method=method, settings=shown, objective=objective, state=state, seconds=seconds,
        searched_as=searched_as.get(method), note="; ".join(notes), params=dict(params or {}),
    )


def trial_row(trial, space, trials) -> TrialRow:
    """An Optuna trial as the report shows it."""
    from .study import DUPLICATE_OF, EPOCHS, ERROR, RERUN_OF, SECONDS

    attrs = trial.user_attrs
    try:
        settings = space.settings_from_params(trial.params)
    except (KeyError, ValueError):  # stopped before its settings were drawn
        settings = {"methods": {}}
    state = STATE_NAMES.get(trial.state.name, trial.state.name.lower())
    notes = []
    if DUPLICATE_OF in attrs:
        notes.append(f"same settings as trial {attrs[DUPLICATE_OF]}, not trained")
    if RERUN_OF in attrs:
        notes.append(f"rerun of interrupted trial {attrs[RERUN_OF]}")
    if state == "pruned" and DUPLICATE_OF not in attrs:
        notes.append(f"pruned after epoch {attrs.get(EPOCHS, 0):g}")
    if state == "failed" and attrs.get(ERROR):
        notes.append(attrs[ERROR])
    value = trial.value
    if state == "pruned" and value is None and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]  # its last evaluation
    return trial_settings_row(trial.number, settings, value, state, float(attrs.get(SECONDS, 0.0)), "; ".join(notes), trial.params)


def study_rows(study, space) -> list[TrialRow]:
    """Every trial of the study but the interrupted ones (their reruns are in) and those past the budget."""
    from .study import OVER_BUDGET, interrupted_numbers

    trials = study.get_trials(deepcopy=False)
    interrupted = interrupted_numbers(trials)
    return [
        trial_row(t, space, trials) for t in trials if t.number not in interrupted and t.state.name != "WAITING" and OVER_BUDGET not in t.user_attrs
    ]


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    complete = [row for row in rows if row.state == "complete" and row.objective is not None and math.isfinite(row.objective)]
    return max(complete, key=lambda row: (row.objective, -row.number)) if complete else None


def trial_line(trial, space, trials, n_trials: int, label: str) -> str:
    """The progress line of a finished trial: what it trained, how it ended, the best so far."""
    from .study import DUPLICATE_OF, spent

    row = trial_row(trial, space, trials)
    head = f"trial {row.number} [{spent(trials)}/{n_trials}] {row.method} {row.settings_words}".rstrip()
    if row.searched_as:
        head += f" (searched as {row.searched_as})"
    if DUPLICATE_OF in trial.user_attrs:
        result = f"same settings as trial {trial.user_attrs[DUPLICATE_OF]}" + (f": {_percent(row.objective)}" if row.objective is not None else "") + ", not trained"
    elif row.state == "complete":
        result = f"{label} {_percent(row.objective)} in {row.seconds:.0f} s"
    elif row.state == "pruned":
        result = f"{row.note} ({row.seconds:.0f} s)"
    else:
        result = f"{row.state} after {row.seconds:.0f} s" + (f": {row.note}" if row.note else "")
    rows = [trial_row(t, space, trials) for t in trials if t.state.name == "COMPLETE"]
    best = best_row(rows)
    tail = f"; best so far {_percent(best.objective)} (trial {best.number}, {best.method})" if best is not None else ""
    return f"{head}: {result}{tail}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f} %"


# ----------------------------------------------------------------------------------------------
# Files


def write_report(config, rows: list[TrialRow], attrs: dict[str, Any], label: str, settings_of, importances=None) -> "TuneResult":
    """Write trials.csv / trials.md / trials.png / best.yaml / best_benchmark.yaml; return the summary lines.

    ``attrs`` holds what the search measured besides its trials (the student alone, the teacher
    cache's build time); ``settings_of(row)`` gives a trial's settings as sampled."""
    from .study import STUDENT_ALONE, TuneResult

    out = config.output_dir
    reference = attrs.get(STUDENT_ALONE)
    importances = importances or {}
    files = {
        "csv": write_csv(rows, out / "trials.csv"),
        "png": plot_trials(rows, importances, reference, label, config.study_name, out / "trials.png"),
    }
    summary = summary_lines(rows, reference, attrs, label)
    best = best_row(rows)
    if best is not None:
        files["best"] = write_best_config(config, trained_settings(config, settings_of(best)), best, label, out / "best.yaml")
        teacher = config.values.get("teacher_model")
        if teacher is None or Path(teacher).is_dir():  # a benchmark's teacher is an exported folder
            files["benchmark"] = write_best_benchmark(config, files["best"], out / "best_benchmark.yaml")
    files["markdown"] = out / "trials.md"
    files["markdown"].write_text(markdown_report(rows, summary, importances, label, config) + "\n")
    summary.append(f"wrote {', '.join(str(p) for p in files.values())}")
    seeds = " ".join(map(str, FINAL_SEEDS))
    if "benchmark" in files:
        summary.append(
            f"next: hf-freqkd benchmark quality --config {shlex.quote(str(files['benchmark']))}   "
            f"# best.yaml on the whole training split, seeds {seeds.replace(' ', ', ')}, tested, next to the student alone"
        )
    elif best is not None:
        best_yaml, runs = shlex.quote(str(files["best"])), shlex.quote(str(out / "best"))
        summary.append(
            f"next: for seed in {seeds}; do hf-freqkd distill --config {best_yaml} seed=$seed output_dir={runs}/seed$seed; done"
            "   # best.yaml on the whole training split, tested"
        )
    return TuneResult({key: str(value) for key, value in files.items()}, summary)


def write_study_report(tuner) -> "TuneResult":
    """The report of an Optuna search, read from its study (every worker's trials)."""
    study, space = tuner.study, tuner.space
    trials = study.get_trials(deepcopy=False)
    return write_report(
        tuner.config, study_rows(study, space), study.user_attrs, tuner.trainer.compute_objective.label,
        lambda row: space.settings_from_params(trials[row.number].params), parameter_importances(study),
    )


def summary_lines(rows: list[TrialRow], reference: dict | None, attrs: dict[str, Any], label: str) -> list[str]:
    best = best_row(rows)
    lines = []
    if best is None:
        lines.append(f"no trial finished: {len(rows)} trial(s), none complete (see trials.md for their errors)")
    else:
        as_searched = f" (searched as {best.searched_as})" if best.searched_as else ""
        lines.append(f"best: trial {best.number}, {best.method}{as_searched} {best.settings_words}: {label} {_percent(best.objective)} on the validation split")
    if reference is not None:
        lines.append(f"student alone: {label} {_percent(reference['objective'])} in {reference['seconds']:.0f} s")
    lines.append(cost_line(rows, reference, attrs))
    return lines


def cost_line(rows: list[TrialRow], reference: dict | None, attrs: dict[str, Any]) -> str:
    """The search's cost: total trial time, and that time in student-alone trainings."""
    total = sum(row.seconds for row in rows)
    counts = {state: sum(1 for row in rows if row.state == state) for state in ("complete", "pruned", "failed")}
    line = f"cost: {len(rows)} trials ({', '.join(f'{n} {state}' for state, n in counts.items() if n)}) in {total / 60:.1f} min"
    if reference is not None and reference.get("seconds"):
        line += f" = {total / reference['seconds']:.1f} student-alone trainings (one: {reference['seconds']:.0f} s)"
    extra = []
    if attrs.get("teacher_cache_seconds"):
        extra.append(f"teacher cache built once in {attrs['teacher_cache_seconds']:.0f} s")
    if extra:
        line += f"; besides: {', '.join(extra)}"
    return line


def write_csv(rows: list[TrialRow], path: Path) -> Path:
    params = sorted({name for row in rows for name in row.params})
    fields = ["trial", "method", "searched_as", "settings", "objective", "state", "seconds", "note", *(f"param.{name}" for name in params)]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    "trial": row.number, "method": row.method, "searched_as": row.searched_as or "", "settings": row.settings_words,
                    "objective": "" if row.objective is None else row.objective, "state": row.state, "seconds": round(row.seconds, 2),
                    "note": row.note, **{f"param.{name}": value for name, value in row.params.items()},
                }
            )
    return path


def markdown_report(rows: list[TrialRow], summary: list[str], importances, label: str, config) -> str:
    lines = [f"### Search {config.study_name}: {label} on the validation split (validation_fraction {config.data_args.validation_fraction})", ""]
    lines += [f"- {line}" for line in summary]
    lines += ["", f"| trial | method | settings | {label} (%) | state | seconds | note |", "|---:|---|---|---:|---|---:|---|"]
    for row in rows:
        value = "" if row.objective is None else f"{100 * row.objective:.2f}"
        lines.append(f"| {row.number} | {row.method} | {row.settings_words} | {value} | {row.state} | {row.seconds:.0f} | {row.note} |")
    if importances:
        lines += ["", "Parameter importances (fANOVA over the complete trials; the share of the objective's variance each explains):", ""]
        for scope, values in importances.items():
            lines.append(f"- {scope}: " + ", ".join(f"{name} {share:.2f}" for name, share in values.items()))
    lines += ["", "Chart: trials.png. Files: trials.csv (every trial, one column per searched parameter), best.yaml."]
    return "\n".join(lines)


def parameter_importances(study) -> dict[str, dict[str, float]]:
    """``{"all trials": {...}, "<method> trials": {...}}``: fANOVA importances over the complete trials,
    overall (the parameters every trial has: ``method``, the fields) and per method with 3 or more trials."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if "duplicate_of" not in t.user_attrs]
    groups = {"all trials": complete}
    for method in sorted({t.params.get("method") for t in complete} - {None}):
        groups[f"{method} trials"] = [t for t in complete if t.params.get("method") == method]
    found = {}
    for scope, trials in groups.items():
        if len(trials) < 3:
            continue
        part = optuna.create_study(direction="maximize")
        part.add_trials(trials)
        try:
            values = get_param_importances(part, evaluator=FanovaImportanceEvaluator(seed=0))
        except (RuntimeError, ValueError, ZeroDivisionError):
            continue
        values = {name: share for name, share in values.items() if not (scope != "all trials" and name == "method")}
        if values:
            found[scope] = values
    return found


def plot_trials(rows: list[TrialRow], importances, reference: dict | None, label: str, name: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    methods = sorted({row.method for row in rows})
    colours = dict(zip(methods, plt.get_cmap("tab10").colors))
    markers = {"complete": "o", "pruned": "x", "failed": "v"}
    for method in methods:
        labelled = False
        for state, marker in markers.items():
            points = [(row.number, 100 * row.objective) for row in rows if row.method == method and row.state == state and row.objective is not None]
            if points:
                xs, ys = zip(*points)
                left.scatter(xs, ys, color=colours[method], marker=marker, label=None if labelled else method, s=36)
                labelled = True
    failed = [row.number for row in rows if row.objective is None]
    finished = [row for row in rows if row.state == "complete" and row.objective is not None]
    if finished:
        best, xs, ys = -math.inf, [], []
        for row in sorted(finished, key=lambda r: r.number):
            best = max(best, 100 * row.objective)
            xs.append(row.number)
            ys.append(best)
        left.step(xs, ys, where="post", color="black", linewidth=1, label="best so far")
    if reference is not None:
        left.axhline(100 * reference["objective"], color="#d62728", linestyle="--", linewidth=1, label="student alone")
    if failed:
        bottom = left.get_ylim()[0]
        left.scatter(failed, [bottom] * len(failed), color="grey", marker="v", label="failed / pruned early")
    left.set_xlabel("trial (x: pruned, v: failed)")
    left.set_ylabel(f"{label} on the validation split (%)")
    left.set_title(f"{name}: objective over trials")
    left.grid(alpha=0.3)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(fontsize=8, loc="best")
    bars = [(f"{scope.removesuffix(' trials')}: {name}", share) for scope, values in importances.items() for name, share in values.items()]
    if bars:
        names, shares = zip(*bars[::-1])
        colours_by_scope = [colours.get(name.split(":")[0], "#555555") for name in names]
        right.barh(names, shares, color=colours_by_scope)
        right.set_xlim(0, 1)
        right.set_xlabel("importance (fANOVA: share of the objective's variance)")
        right.set_title("parameter importances (all trials; each method's own)")
    else:
        right.text(0.5, 0.5, "importances need 3 complete trials\nwith a varying parameter", ha="center", va="center")
        right.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------------------------
# best.yaml


def trained_settings(config, settings: dict[str, Any]) -> dict[str, Any]:
    """A trial's settings as trained: equivalent methods reported as what they equal, FreeKD's prompts file named."""
    from ..methods.freekd import FreeKDOptions
    from .prompts import complete_options, prompts_file, reads_fitted_prompts
    from .space import reported_methods

    methods, _ = reported_methods(settings["methods"])
    for name, options in methods.items():
        if reads_fitted_prompts(name, options):
            checked = complete_options(name, FreeKDOptions, options)
            options["prompts_path"] = str(prompts_file(config.output_dir / "prompts", checked, config.args.seed))
    return {**settings, "methods": methods}


def write_best_config(config, settings: dict[str, Any], best: TrialRow, label: str, path: Path) -> Path:
    values = copy.deepcopy(config.values)
    for key in ("validation_fraction", "teacher_cache", "teacher_cache_features", "teacher_cache_layers"):
        values.pop(key, None)
    values["methods"] = settings["methods"]
    values.update({key: value for key, value in settings.items() if key != "methods"})
    values["output_dir"] = str(config.output_dir / "best")
    header = [
        f"# The best trial ({best.number}) of the search '{config.study_name}' ({config.source or 'a tune config'}): {best.method}"
        + (f" (searched as {best.searched_as})" if best.searched_as else "")
        + f", {label} {_percent(best.objective)} on the validation split.",
        "# A complete hf-freqkd distill config: it trains on the whole training split (validation_fraction removed) and",
        "# evaluates on the dataset's evaluation split.",
        f"#   hf-freqkd distill --config {path}",
    ]
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(_plain(values), sort_keys=False))
    return path


def write_best_benchmark(config, best_config: Path, path: Path) -> Path:
    """best.yaml and the student alone, over ``FINAL_SEEDS``, as an ``hf-freqkd benchmark quality`` config."""
    from ..config import read_yaml_config

    values = read_yaml_config(best_config)
    methods = values.pop("methods")
    teacher = values.pop("teacher_model", None)
    student = {"student_model": values.pop("student_model", "resnet8")}
    values.pop("output_dir", None)
    values.pop("seed", None)
    benchmark = {
        "name": f"{config.study_name}, tuned",
        "description": f"The best trial of the search in {config.output_dir} (best.yaml), trained on the whole training split and tested, "
        "next to the student alone.",
        "output_dir": str(config.output_dir / "best_benchmark"),
        "seeds": list(FINAL_SEEDS),
        "common": values,
        "teacher": {"model": teacher},
        "student": student,
        "methods": {"ce": {"ce": {}}, "tuned": methods},
    }
    header = f"# best.yaml over seeds {', '.join(map(str, FINAL_SEEDS))} next to the student alone:\n#   hf-freqkd benchmark quality --config {path}\n"
    path.write_text(header + yaml.safe_dump(_plain(benchmark), sort_keys=False))
    return path


def _plain(value: Any) -> Any:
    """YAML-plain (enums as their values, tuples as lists)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return getattr(value, "value", value)

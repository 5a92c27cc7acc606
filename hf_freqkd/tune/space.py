"""The search space of ``hf-freqkd tune`` and ``DistillationTrainer.hyperparameter_search``.

A space is three things, written as YAML (a tune config's ``search:`` section) or as the same
Python dicts::

    methods:                      # the candidates, one chosen per trial (Optuna parameter "method")
      - kd                        #   kd with its default space (KDOptions.search_space)
      - figkd: {bands: [high, all], levels: 1}   # figkd's default space, bands and levels replaced
    params:                       # DistillationConfig fields varied in every trial
      learning_rate: {low: 0.01, high: 0.2, log: true}

and, in a tune config, the run config's own ``methods`` (``ce: {weight: 1.0}``): the methods of
every trial, whose options may be ranges too. One option is written as

* ``[a, b, c]`` or ``{choices: [a, b, c]}``: one of these values (a categorical parameter);
* ``{low: a, high: b}``, with ``log: true`` (log-uniform) and ``step: s`` optional: a number in
  ``[a, b]``, an integer when the option is one;
* anything else (``4.0``, ``high``), or ``{value: [1, 2]}`` for a list: that value, not searched.

A method's default space is the ``search_space`` class attribute of its options dataclass, written
in this syntax next to the option defaults (``KDOptions.search_space``); the candidate's own entries
replace the default's, option by option (fix one to a value to stop searching it). Optuna parameters
are named ``method``, ``<method>.<option>`` and ``<field>``.

Every value a space can produce is checked before the first trial (:meth:`SearchSpace.check`): the
options are built at each end of every range and at every choice, with the method's own validation
(the options dataclass), and the fields by ``DistillationConfig``'s. A value no combination of the
others accepts is refused, naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..coercion import coerce
from ..errors import ConfigError, MethodOptionsError
from .prompts import complete_options

#: the Optuna parameter that chooses among the candidate methods
METHOD_PARAMETER = "method"
#: DistillationConfig fields a search may not vary: where the run goes, what the search itself sets
#: per trial (methods, the teacher cache, evaluation for pruning), or what resumes another run.
ENGINE_FIELDS = (
    "output_dir", "methods", "resume_from_checkpoint", "teacher_model", "teacher_checkpoint", "teacher_cache",
    "teacher_cache_features", "teacher_cache_layers", "eval_strategy", "save_strategy", "load_best_model_at_end",
)
#: options whose combinations :meth:`SearchSpace.check` tries at most, per checked value
_MAX_COMBINATIONS = 512


# ----------------------------------------------------------------------------------------------
# One option: a value, choices or a range


@dataclass(frozen=True)
class Fixed:
    """A value every trial takes (not an Optuna parameter)."""

    value: Any

    def test_values(self) -> list[Any]:
        return [self.value]

    def describe(self) -> dict[str, Any]:
        return {"value": self.value}


@dataclass(frozen=True)
class Choice:
    """One of ``choices`` (an Optuna categorical). Values Optuna cannot store (lists) travel as JSON text."""

    choices: tuple

    def test_values(self) -> list[Any]:
        return list(self.choices)

    def describe(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}

    @property
    def encoded(self) -> list[Any]:
        return [_encode(value) for value in self.choices]

    def decode(self, stored: Any) -> Any:
        return self.choices[self.encoded.index(stored)]


@dataclass(frozen=True)
class Range:
    """A number in ``[low, high]``: log-uniform with ``log``, on a grid with ``step``, an integer with ``integer``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    def test_values(self) -> list[Any]:
        return [self.low, self.high]

    def describe(self) -> dict[str, Any]:
        described = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            described["step"] = self.step
        return described


Spec = Fixed | Choice | Range


def _encode(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _varies(spec: Spec) -> bool:
    return isinstance(spec, Range) or isinstance(spec, Choice) and len(spec.choices) > 1


def parse_spec(raw: Any, where: str, annotation: Any) -> Spec:
    """One option's entry (see the module docstring) as a :class:`Fixed`, :class:`Choice` or
    :class:`Range` of values of ``annotation``; ``where`` names it in errors (``kd.temperature``)."""
    if isinstance(raw, list):
        return _choice(raw, where, annotation)
    if isinstance(raw, Mapping):
        keys = set(raw)
        if keys == {"choices"}:
            if not isinstance(raw["choices"], list):
                raise ConfigError(f"search space: {where} choices = {raw['choices']!r} is invalid: expected a list of values")
            return _choice(raw["choices"], where, annotation)
        if keys == {"value"}:
            return Fixed(_coerce(raw["value"], where, annotation))
        if keys and keys <= {"low", "high", "log", "step"}:
            return _range(raw, where, annotation)
        if keys & {"low", "high", "log", "step", "choices", "value"}:
            unknown = sorted(keys - {"low", "high", "log", "step"})
            raise ConfigError(
                f"search space: {where} = {dict(raw)!r} mixes {', '.join(unknown)} with other keys: write a range "
                "{low: a, high: b, log: true, step: s}, choices [a, b] (or {choices: [a, b]}) or a value {value: v}"
            )
        # A mapping that is none of those is the option's own value (a dict-valued option).
    return Fixed(_coerce(raw, where, annotation))


def _choice(values: list, where: str, annotation: Any) -> Choice:
    if not values:
        raise ConfigError(f"search space: {where} has no choices: give at least one value")
    coerced = tuple(_coerce(value, where, annotation) for value in values)
    if len({json.dumps(_encode(v)) for v in coerced}) != len(coerced):
        raise ConfigError(f"search space: {where} lists a value twice in {values!r}")
    return Choice(coerced)


def _range(raw: Mapping, where: str, annotation: Any) -> Range:
    kind = _number_kind(annotation)
    if kind is None:
        raise ConfigError(
            f"search space: {where} takes {_type_words(annotation)}, not a number: give choices [a, b] instead of a range"
        )
    missing = [key for key in ("low", "high") if key not in raw]
    if missing:
        raise ConfigError(f"search space: {where} = {dict(raw)!r} has no {' and no '.join(missing)}: a range needs low and high")
    low, high = (_coerce(raw[key], f"{where}.{key}", kind) for key in ("low", "high"))
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"search space: {where}.log = {log!r} is invalid: expected true or false")
    step = raw.get("step")
    if step is not None:
        step = _coerce(step, f"{where}.step", kind)
        if not step > 0:
            raise ConfigError(f"search space: {where}.step = {step!r} is invalid: expected a number > 0")
        if log:
            raise ConfigError(f"search space: {where} sets both log and step; Optuna samples a log range without a step")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"search space: {where} = {{low: {low}, high: {high}}} is invalid: expected finite low < high")
    if log and low <= 0:
        raise ConfigError(f"search space: {where} = {{low: {low}, high: {high}, log: true}} is invalid: a log range needs low > 0")
    return Range(low, high, log, step, integer=kind is int)


def _number_kind(annotation: Any) -> type | None:
    """int or float when ``annotation`` is one (or an Optional of one), else None."""
    if annotation in (int, float):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(kinds) == 1 and kinds[0] in (int, float):
            return kinds[0]
    return None


def _type_words(annotation: Any) -> str:
    from ..methods.base import _type_name

    return _type_name(annotation)


def _coerce(value: Any, where: str, annotation: Any) -> Any:
    try:
        return coerce(value, annotation)
    except TypeError as error:
        raise ConfigError(f"search space: {where} = {value!r} is invalid: {error}") from None


# ----------------------------------------------------------------------------------------------
# The space


@dataclass
class SearchSpace:
    """Candidate methods (one per trial), the methods of every trial, and DistillationConfig fields.

    Called with an Optuna trial it returns the trial's settings, ``{"methods": {...}, "<field>": v}``
    (what ``hp_space`` returns for ``Trainer.hyperparameter_search``); called with None it returns the
    Ray Tune config (what transformers' Ray backend asks for), whose samples
    :meth:`settings_from_ray` turns into the same settings.
    """

    methods: dict[str, dict[str, Spec]] = field(default_factory=dict)
    base: dict[str, dict[str, Spec]] = field(default_factory=dict)
    params: dict[str, Spec] = field(default_factory=dict)

    @classmethod
    def parse(cls, methods: Any = None, params: Mapping[str, Any] | None = None, base_methods: Any = None) -> "SearchSpace":
        """Read the YAML form (see the module docstring); unknown methods, options and fields are refused."""
        from ..methods.registry import normalize_method_specs

        candidates = normalize_method_specs(_single_key_entries(methods))
        base = normalize_method_specs(_single_key_entries(base_methods))
        if params is not None and not isinstance(params, Mapping):
            raise ConfigError(f"search.params = {params!r} is invalid: expected a mapping of DistillationConfig field to range")
        both = [name for name in candidates if name in base]
        if both:
            raise MethodOptionsError(
                f"method {', '.join(map(repr, both))} is both in methods (every trial) and among the searched methods (one per "
                "trial); list it in one of them"
            )
        space = cls(
            methods={name: _method_specs(name, options, defaults=True) for name, options in candidates.items()},
            base={name: _method_specs(name, options, defaults=False) for name, options in base.items()},
            params={name: _param_spec(name, value) for name, value in (params or {}).items()},
        )
        return space

    @classmethod
    def from_methods(cls, methods: Mapping[str, Any]) -> "SearchSpace":
        """The default space of a run's ``methods``: each non-``ce`` method a candidate with its default
        space around the run's own values of the options it does not search; ``ce`` in every trial."""
        from ..methods.registry import get_method_class, normalize_method_specs

        specs = normalize_method_specs(methods)
        candidates = {}
        for name, options in specs.items():
            if name == "ce":
                continue
            searched = set(getattr(get_method_class(name).options_class, "search_space", {}))
            candidates[name] = {option: value for option, value in options.items() if option not in searched}
        return cls.parse(candidates, base_methods={"ce": specs["ce"]} if "ce" in specs else None)

    # ------------------------------------------------------------------------------------------
    # What it holds

    def is_empty(self) -> bool:
        """True when no trial could differ from another: nothing to search."""
        specs = [*self.params.values(), *(s for m in (*self.methods.values(), *self.base.values()) for s in m.values())]
        return len(self.methods) <= 1 and not any(_varies(spec) for spec in specs)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every parameter and fixed value by name (``method``, ``kd.temperature``, ``learning_rate``),
        JSON-plain: what a study stores to refuse being continued with another space."""
        described: dict[str, dict[str, Any]] = {}
        if self.methods:
            described[METHOD_PARAMETER] = {"choices": list(self.methods)}
        for group in (self.base, self.methods):
            for name, specs in group.items():
                for option, spec in specs.items():
                    described[f"{name}.{option}"] = spec.describe()
        described.update({name: spec.describe() for name, spec in self.params.items()})
        return json.loads(json.dumps(described, default=str))

    def differences(self, stored: Mapping[str, Any]) -> list[str]:
        """How this space differs from a stored :meth:`describe`, one phrase per parameter."""
        current = self.describe()
        found = []
        for name in sorted(set(stored) | set(current)):
            if name not in current:
                found.append(f"{name} (searched by the study, not by this config: {_short(stored[name])})")
            elif name not in stored:
                found.append(f"{name} (new in this config: {_short(current[name])})")
            elif stored[name] != current[name]:
                found.append(f"{name}: {_short(stored[name])} in the study, {_short(current[name])} in this config")
        return found

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------
    # Checking every value before the first trial

    def check(self, args=None) -> None:
        """Refuse (MethodOptionsError / ConfigError naming the value) any value the options' own
        validation, or ``DistillationConfig``'s for ``params`` (given ``args``, the run's config),
        rejects whatever the other searched values are; and an empty space."""
        from ..methods.registry import get_method_class

        for name, specs in {**self.base, **self.methods}.items():
            cls = get_method_class(name)
            for option, spec in specs.items():
                others = {o: s.test_values() for o, s in specs.items() if o != option}
                for value in spec.test_values():
                    error = _first_error(cls, name, option, value, others)
                    if error is not None:
                        raise MethodOptionsError(
                            f"search space: {name}.{option} = {value!r} ({_spec_words(spec)}) is not a valid value: {error}"
                        )
        if args is not None:
            for name, spec in self.params.items():
                for value in spec.test_values():
                    try:
                        dataclasses.replace(args, **{name: value})
                    except (ValueError, TypeError) as error:
                        reason = " ".join(str(error).split())
                        raise ConfigError(f"search space: {name} = {value!r} ({_spec_words(spec)}) is not a valid value: {reason}") from None
        if self.is_empty():
            raise ConfigError(
                "the search space is empty: nothing varies from one trial to the next. List the methods to choose among "
                "(search.methods: [kd, figkd, fam_l2l], each with its default space) or give ranges (search.params: "
                "{learning_rate: {low: 0.01, high: 0.2, log: true}})"
            )

    # ------------------------------------------------------------------------------------------
    # Sampling: Optuna, Ray Tune

    def __call__(self, trial) -> dict[str, Any]:
        if trial is None:
            return self.ray_config()
        return self.settings(lambda name, spec: _suggest(trial, name, spec))

    def settings(self, pick: Callable[[str, Spec], Any]) -> dict[str, Any]:
        """A trial's settings, ``pick(parameter name, spec)`` giving each searched value."""

        def value(name: str, spec: Spec) -> Any:
            if isinstance(spec, Fixed):
                return spec.value
            if isinstance(spec, Choice) and len(spec.choices) == 1:
                return spec.choices[0]
            return pick(name, spec)

        methods = {name: {o: value(f"{name}.{o}", s) for o, s in specs.items()} for name, specs in self.base.items()}
        if self.methods:
            names = list(self.methods)
            chosen = value(METHOD_PARAMETER, Choice(tuple(names)))
            methods[chosen] = {o: value(f"{chosen}.{o}", s) for o, s in self.methods[chosen].items()}
        return {"methods": methods, **{name: value(name, spec) for name, spec in self.params.items()}}

    def ray_config(self) -> dict[str, Any]:
        """The space as a flat Ray Tune config (every candidate's options sampled, the chosen one's used)."""
        from ray import tune

        config: dict[str, Any] = {}

        def add(name: str, spec: Spec) -> None:
            if isinstance(spec, Choice):
                config[name] = tune.choice(spec.encoded)
            elif isinstance(spec, Range):
                config[name] = _ray_range(tune, spec)

        if len(self.methods) > 1:
            add(METHOD_PARAMETER, Choice(tuple(self.methods)))
        for group in (self.base, self.methods):
            for method, specs in group.items():
                for option, spec in specs.items():
                    add(f"{method}.{option}", spec)
        for name, spec in self.params.items():
            add(name, spec)
        return config

    def settings_from_ray(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The settings of a Ray Tune trial's sampled ``config``."""
        return self.settings(lambda name, spec: spec.decode(config[name]) if isinstance(spec, Choice) else config[name])

    def settings_from_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The settings of a finished Optuna trial, from its ``params``."""
        return self.settings(lambda name, spec: spec.decode(params[name]) if isinstance(spec, Choice) else params[name])


def _suggest(trial, name: str, spec: Spec) -> Any:
    if isinstance(spec, Choice):
        return spec.decode(trial.suggest_categorical(name, spec.encoded))
    if spec.integer:
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


def _ray_range(tune, spec: Range):
    if spec.integer:
        # Ray's integer ranges exclude the upper bound; qrandint / qlograndint include it.
        if spec.log:
            return tune.qlograndint(int(spec.low), int(spec.high), 1)
        return tune.qrandint(int(spec.low), int(spec.high), int(spec.step or 1))
    if spec.log:
        return tune.loguniform(spec.low, spec.high)
    return tune.quniform(spec.low, spec.high, spec.step) if spec.step else tune.uniform(spec.low, spec.high)


def _single_key_entries(methods: Any) -> Any:
    """A list entry ``{figkd: {bands: all}}`` (YAML ``- figkd: {bands: all}``) as ``{name: figkd, bands: all}``,
    the list form :func:`~hf_freqkd.methods.registry.normalize_method_specs` reads."""
    if not isinstance(methods, (list, tuple)):
        return methods
    entries = []
    for entry in methods:
        if isinstance(entry, Mapping) and len(entry) == 1 and "name" not in entry:
            (name, options), = entry.items()
            if options is not None and not isinstance(options, Mapping):
                raise MethodOptionsError(f"options of method '{name}' = {options!r} are invalid: expected a mapping")
            entry = {"name": name, **(options or {})}
        entries.append(entry)
    return entries


def _method_specs(name: str, options: Mapping[str, Any], defaults: bool) -> dict[str, Spec]:
    """A method's option specs: its default space (for a candidate) with ``options`` on top."""
    from ..methods.registry import get_method_class

    options_class = get_method_class(name).options_class
    hints = typing.get_type_hints(options_class)
    valid = [f.name for f in dataclasses.fields(options_class) if f.init]
    written = dict(getattr(options_class, "search_space", {})) if defaults else {}
    for option in options:
        if option not in valid:
            close = difflib.get_close_matches(option, valid, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise MethodOptionsError(f"search space: method '{name}' has no option '{option}'{hint}; valid options: {', '.join(valid)}")
    written.update(options)
    return {option: parse_spec(raw, f"{name}.{option}", hints[option]) for option, raw in written.items()}


def _param_spec(name: str, raw: Any) -> Spec:
    from ..config import DistillationConfig

    hints = typing.get_type_hints(DistillationConfig)
    fields = [f.name for f in dataclasses.fields(DistillationConfig) if f.init]
    if name in ENGINE_FIELDS:
        raise ConfigError(
            f"search.params: '{name}' is set by the search itself, not searched"
            + (" (list the methods to choose among in search.methods)" if name == "methods" else "")
        )
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"search.params: '{name}' is not a training argument{hint}; a search varies DistillationConfig fields "
            "(learning_rate, weight_decay, distill_warmup_epochs, ...) and, in search.methods, the methods' options"
        )
    return parse_spec(raw, name, hints[name])


def _first_error(cls, name: str, option: str, value: Any, others: dict[str, list[Any]]) -> str | None:
    """None if some combination of the other options' test values accepts ``option = value``, else
    the error of the first combination tried (the others at their first values)."""
    combinations = itertools.islice(itertools.product(*others.values()), _MAX_COMBINATIONS)
    first_error = None
    for combination in combinations:
        values = {**dict(zip(others, combination)), option: value}
        try:
            complete_options(name, cls.options_class, values)
            return None
        except MethodOptionsError as error:
            first_error = first_error or str(error)
    return first_error


def _spec_words(spec: Spec) -> str:
    if isinstance(spec, Range):
        return f"range {_short(spec.describe())}"
    if isinstance(spec, Choice):
        return f"one of the choices {list(spec.choices)!r}"
    return "the value given"


def _short(described: Any) -> str:
    return json.dumps(described, sort_keys=True).replace('"', "")


# ----------------------------------------------------------------------------------------------
# Equivalent settings


def reported_methods(methods: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``methods`` with every method whose options compute exactly another method's loss replaced by
    that method (``figkd`` with ``bands: all`` is ``kd``: ``FiGKDOptions.equivalent``), and
    ``{reported name: searched name}`` for those replaced."""
    from ..methods.registry import get_method_class

    reported: dict[str, dict[str, Any]] = {}
    searched_as: dict[str, str] = {}
    for name, options in methods.items():
        built = complete_options(name, get_method_class(name).options_class, dict(options))
        equivalent = getattr(built, "equivalent", None)
        same = equivalent() if equivalent is not None else None
        if same is not None and same[0] not in methods:
            reported[same[0]] = dict(same[1])
            searched_as[same[0]] = name
        else:
            reported[name] = dict(options)
    return reported, searched_as


def settings_key(settings: Mapping[str, Any]) -> str:
    """A digest equal for two trial settings exactly when they train the same thing: each method's
    complete options (defaults filled in, ``ce`` added at its defaults when absent, equivalent
    methods reported as the method they equal) and every other setting."""
    from ..methods.registry import get_method_class

    methods, _ = reported_methods(settings.get("methods") or {})
    methods.setdefault("ce", {})
    complete = {
        name: dataclasses.asdict(complete_options(name, get_method_class(name).options_class, dict(options)))
        for name, options in sorted(methods.items())
    }
    rest = {key: value for key, value in settings.items() if key != "methods"}
    text = json.dumps({"methods": complete, **rest}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

"""The registry of distillation methods: a name -> class map filled by ``@register_method``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import DistillationMethod, options_from_dict

_METHODS: dict[str, type[DistillationMethod]] = {}


def register_method(cls: type[DistillationMethod]) -> type[DistillationMethod]:
    """Class decorator: make ``cls`` available under ``cls.name`` in configs and the CLI."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} must set a class attribute `name` to register")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"a method named '{name}' is already registered ({_METHODS[name].__qualname__})")
    _METHODS[name] = cls
    return cls


def available_methods() -> dict[str, type[DistillationMethod]]:
    """Registered methods by name, sorted."""
    return dict(sorted(_METHODS.items()))


def get_method_class(name: str) -> type[DistillationMethod]:
    if name not in _METHODS:
        raise ValueError(f"unknown method '{name}'; registered methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def normalize_method_specs(methods: Any) -> dict[str, dict[str, Any]]:
    """Accept the forms a config may use and return ``{name: {option: value}}``.

    Forms: a mapping ``{kd: {temperature: 4}, ce: {weight: 0.1}}`` (canonical), a list of names
    ``[ce, kd]``, or a list of dicts ``[{name: kd, temperature: 4}]``.
    """
    if methods is None:
        return {}
    if isinstance(methods, str):
        methods = [part.strip() for part in methods.split(",") if part.strip()]
    if isinstance(methods, Mapping):
        items = list(methods.items())
    elif isinstance(methods, (list, tuple)):
        items = []
        for entry in methods:
            if isinstance(entry, str):
                items.append((entry, {}))
            elif isinstance(entry, Mapping) and "name" in entry:
                entry = dict(entry)
                items.append((entry.pop("name"), entry))
            else:
                raise ValueError(f"method entry {entry!r} is invalid: expected a name or a mapping with a 'name' key")
    else:
        raise ValueError(f"methods = {methods!r} is invalid: expected a mapping of method name to options")
    specs: dict[str, dict[str, Any]] = {}
    for name, options in items:
        if not isinstance(name, str):
            raise ValueError(f"method name {name!r} is invalid: expected a string")
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ValueError(f"options of method '{name}' = {options!r} are invalid: expected a mapping")
        if name in specs:
            raise ValueError(f"method '{name}' is listed twice")
        get_method_class(name)
        specs[name] = dict(options)
    return specs


def build_methods(methods: Any, *, add_ce: bool = True) -> list[DistillationMethod]:
    """Instantiate the configured methods (options validated), adding ``ce`` at weight 1 if absent.

    The ground-truth cross-entropy stays in every run (methods.md, shared conventions); list ``ce``
    with ``weight: 0`` to train on the teacher alone.
    """
    specs = normalize_method_specs(methods)
    if add_ce and "ce" not in specs:
        specs = {"ce": {}, **specs}
    built = []
    for name, options in specs.items():
        cls = get_method_class(name)
        built.append(cls(options_from_dict(cls.options_class, options, name)))
    return built

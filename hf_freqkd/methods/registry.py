"""The registry of distillation methods: a name -> class map filled by ``@register_method``."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping
from typing import Any

from ..errors import MethodOptionsError
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
    """The class registered as ``name``; an unknown name is refused with the closest registered ones."""
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise MethodOptionsError(f"unknown method '{name}'{hint}; registered methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_description(cls: type[DistillationMethod]) -> str:
    """One line saying what the method does: its ``description``, else the first line of its class
    docstring, else of its module's docstring (for methods written before ``description`` existed)."""
    for text in (getattr(cls, "description", None), cls.__doc__, sys.modules[cls.__module__].__doc__):
        if isinstance(text, str) and text.strip():
            return text.strip().splitlines()[0].removeprefix(f"``{cls.name}``: ")
    return cls.__name__


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
                raise MethodOptionsError(f"method entry {entry!r} is invalid: expected a name or a mapping with a 'name' key")
    else:
        raise MethodOptionsError(f"methods = {methods!r} is invalid: expected a mapping of method name to options")
    specs: dict[str, dict[str, Any]] = {}
    for name, options in items:
        if not isinstance(name, str):
            raise MethodOptionsError(f"method name {name!r} is invalid: expected a string")
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise MethodOptionsError(f"options of method '{name}' = {options!r} are invalid: expected a mapping")
        if name in specs:
            raise MethodOptionsError(f"method '{name}' is listed twice")
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

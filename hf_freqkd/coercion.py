"""One rule for turning a YAML or command-line value into the type a field declares.

Used for the top-level config keys (:func:`hf_freqkd.config.check_config_keys`) and for method
options (:func:`hf_freqkd.methods.base.options_from_dict`), so a value means the same in both.

YAML 1.1 (PyYAML) reads ``1e1``, ``4e0`` and ``5e-4`` as strings (its floats need a dot), and a
quoted ``'0.25'`` is a string too; where a field is a number, such a string is read as the number
it spells. An integer field takes an integral number however it is written (``8``, ``8.0``,
``8e0``) and refuses ``2.5``. Booleans are never numbers, and numbers never strings.
"""

from __future__ import annotations

import enum
import math
import types
import typing
from typing import Any, Literal

__all__ = ["coerce"]


def coerce(value: Any, annotation: Any) -> Any:
    """``value`` converted to ``annotation``; ``TypeError("expected ...")`` when it does not fit.

    Handles ``float``, ``int``, ``bool``, ``str``, ``Optional`` / unions (first alternative that fits),
    ``Literal``, ``list[...]`` / ``tuple[...]`` (items converted), ``dict``, ``Any`` and classes
    (an ``isinstance`` check). The message names what was expected, not the value: the caller adds
    which key and value it was.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        expected = []
        for alternative in args:
            if alternative is type(None):
                continue
            try:
                return coerce(value, alternative)
            except TypeError as error:
                expected.append(str(error).removeprefix("expected "))
        raise TypeError("expected " + " or ".join(expected))
    if origin is Literal:
        if not any(value == arg and type(value) is type(arg) for arg in args):  # True is not 1
            raise TypeError(f"expected one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TypeError("expected a list")
        item_type = args[0] if args else Any
        items = [coerce(item, item_type) for item in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise TypeError("expected a mapping")
        return value
    if annotation is Any:
        return value
    if annotation is float:
        number = _number(value)
        if number is None:
            raise TypeError("expected a number")
        return float(number)
    if annotation is int:
        number = _number(value)
        if number is None or isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
            raise TypeError("expected an integer")
        return int(number)
    if annotation is bool:
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        # transformers' option enums (SchedulerType, IntervalStrategy, ...): checked, kept as written.
        try:
            annotation(value)
        except ValueError:
            raise TypeError(f"expected one of {', '.join(repr(member.value) for member in annotation)}") from None
        return value
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise TypeError(f"expected {annotation.__name__}")
    return value


def _number(value: Any) -> int | float | None:
    """The int or float ``value`` is or spells (``"1e1"``, ``" 0.25"``); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            return None
    return None

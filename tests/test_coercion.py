"""hf_freqkd.coercion.coerce: the one rule config keys and method options follow."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import pytest
from transformers.trainer_utils import IntervalStrategy

from hf_freqkd.coercion import coerce


@pytest.mark.parametrize(
    "value, annotation, expected",
    [
        # PyYAML reads 1e1, 4e0 and 5e-4 as strings (its floats need a dot); they are numbers here.
        ("1e1", float, 10.0),
        ("5e-4", float, 5e-4),
        (" 0.25", float, 0.25),
        (3, float, 3.0),
        ("4e0", int, 4),
        (8.0, int, 8),
        ("12", int, 12),
        ("1e1", Optional[float], 10.0),
        (None, Optional[int], None),
        (["1e1", 2], list[float], [10.0, 2.0]),
        (["a", "b"], tuple[str, ...], ("a", "b")),
        ("mean", Literal["mean", "sum"], "mean"),
        ({"a": 1}, Union[dict, str], {"a": 1}),
        ("no", Union[IntervalStrategy, str], "no"),
        ("steps", IntervalStrategy, "steps"),
        ([1, "x"], Any, [1, "x"]),
    ],
)
def test_values_that_fit(value, annotation, expected):
    result = coerce(value, annotation)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    "value, annotation, expected",
    [
        ("hot", float, "expected a number"),
        (True, float, "expected a number"),
        (2.5, int, "expected an integer"),
        ("2.5", int, "expected an integer"),
        (float("inf"), int, "expected an integer"),
        (False, int, "expected an integer"),
        ("yes", bool, "expected true or false"),
        (1, bool, "expected true or false"),
        (3, str, "expected a string"),
        ("layer1", list[str], "expected a list"),
        (True, Literal[1, 2], "expected one of 1, 2"),
        ("max", Literal["mean", "sum"], "expected one of 'mean', 'sum'"),
        ("sometimes", IntervalStrategy, "expected one of 'no', 'steps', 'epoch'"),
        ("fast", Optional[Union[int, list[int]]], "expected an integer or a list"),
    ],
)
def test_values_that_do_not_fit_say_what_was_expected(value, annotation, expected):
    with pytest.raises(TypeError, match=f"^{expected}"):
        coerce(value, annotation)

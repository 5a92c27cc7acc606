"""Fuzzing every registered method: options drawn from each options dataclass's typed fields, inputs of
random shapes and dtypes. Either the options / build step refuses with the library's clear error
(:class:`~hf_freqkd.errors.BadInputError`, a ValueError), or the loss and its gradients are finite.
Anything else - a TypeError, another exception from deep inside torch, a NaN or an inf - fails.
A fuzzer whose examples are all refused tests only the refusals, so each method must also compute a
loss on a minimum number of examples.

Derandomized, so CI sees the same examples every run; the whole file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections import Counter
from typing import Any, Literal

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import hf_freqkd  # noqa: F401  registers every method
from hf_freqkd.errors import BadInputError
from hf_freqkd.methods import available_methods
from hf_freqkd.methods.base import options_from_dict
from hf_freqkd.types import BackboneInfo, LogitsAndFeatures

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
STUDENT_STAGES, TEACHER_STAGES = ("s1", "s2", "s3"), ("t1", "t2", "t3")
POOLED = "global_pool"
# Values a user might write for a string option: real wavelets / modes / layers, and wrong ones.
STRINGS = (
    "haar", "db2", "sym4", "coif1", "bior2.2", "dmey", "morl", "zero", "symmetric", "reflect", "periodic",
    "periodization", "smooth", "constant", *STUDENT_STAGES, *TEACHER_STAGES, POOLED, "", "nonsense", "/nonexistent/prompts.safetensors",
)
JUNK = st.sampled_from(["x", [1], {"a": 1}, True, None, 3.5])
FEATURE_METHODS = {"fam", "fam_l2l", "feature_mse", "freekd"}
# The library's refusal of bad options or shapes. ValueError is accepted too while some layers still
# raise it bare; TypeError, KeyError, a bare FileNotFoundError (not MissingPathError) ... are failures.
CLEAR_ERRORS = (BadInputError, ValueError)


def value_strategy(annotation: Any) -> st.SearchStrategy:
    """Values of the annotated type, edge cases included (validation decides which are acceptable)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(value_strategy(arg) for arg in args))
    if annotation is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (list, tuple):
        items = value_strategy(args[0] if args else int)
        return st.one_of(st.lists(items, min_size=1, max_size=3), st.lists(items, min_size=1, max_size=3), st.just([]))
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        # Small: a huge width would only test how much memory the machine has.
        return st.one_of(st.integers(0, 4), st.integers(-2, 64))
    if annotation is float:
        plausible = st.sampled_from([0.0, 1e-3, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0])
        edges = st.sampled_from([-1.0, 1e-8, 1e3, 1e4, 1e8, float("nan"), float("inf")])
        return st.one_of(plausible, plausible, plausible, edges, st.floats(allow_nan=True, allow_infinity=True))
    if annotation is str:
        return st.one_of(st.sampled_from(STRINGS), st.sampled_from(STRINGS), st.text(max_size=4))
    return st.none()


# Starting points that make a method's defaults runnable without files (freekd's prompts come from stage 1).
BASE_OPTIONS = {"freekd": {"masks": "uniform"}}


@st.composite
def options_for(draw, name: str, options_class) -> dict[str, Any]:
    """A random subset of the options, each a typed value or (rarely) junk of another type."""
    hints = typing.get_type_hints(options_class)
    fields = [f.name for f in dataclasses.fields(options_class) if f.init]
    chosen = draw(st.lists(st.sampled_from(fields), unique=True, max_size=min(4, len(fields))))
    values = dict(BASE_OPTIONS.get(name, {}))
    for option in chosen:
        values[option] = draw(JUNK if draw(st.integers(0, 19)) == 0 else value_strategy(hints[option]))
    return values


def finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor.float()).all())


def check_loss_and_gradients(method, student: LogitsAndFeatures, teacher: LogitsAndFeatures | None, labels, leaves) -> None:
    terms = method(student, teacher, labels)
    assert terms and all(isinstance(name, str) for name in terms)
    for name, value in terms.items():
        assert value.dim() == 0, f"{name} is not a scalar: {tuple(value.shape)}"
        assert finite(value), f"{name} = {value}"
    total = torch.stack([value.float() for value in terms.values()]).sum() * method.weight
    if total.requires_grad:
        total.backward()
    for leaf in leaves:
        assert leaf.grad is None or finite(leaf.grad), "non-finite gradient of an input"
    for name, parameter in method.named_parameters():
        assert parameter.grad is None or finite(parameter.grad), f"non-finite gradient of {name}"


def logits_and_labels(draw, dtype):
    batch, classes = draw(st.integers(1, 4)), draw(st.integers(2, 300))
    scale = draw(st.sampled_from([1e-4, 1.0, 10.0, 100.0, 1e4]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    student = (torch.randn(batch, classes, generator=generator) * scale).to(dtype).requires_grad_()
    teacher = (torch.randn(batch, classes, generator=generator) * scale).to(dtype)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return student, teacher, labels, classes


@st.composite
def feature_shapes(draw, names: tuple[str, ...], batch: int) -> dict[str, torch.Size]:
    shapes = {}
    for name in names:
        channels = draw(st.integers(1, 12))
        if name == POOLED:
            shapes[name] = torch.Size((batch, channels))
        else:
            shapes[name] = torch.Size((batch, channels, draw(st.integers(1, 12)), draw(st.integers(1, 12))))
    return shapes


def run_case(name: str, draw) -> str:
    """One fuzz example; returns where it ended: "options refused", "build refused" or "loss computed"."""
    cls = available_methods()[name]
    values = draw(options_for(name, cls.options_class))
    try:
        options = options_from_dict(cls.options_class, values, name)
    except CLEAR_ERRORS:
        return "options refused"  # with a message naming the option (tests/test_config.py)
    method = cls(options)
    dtype = draw(st.sampled_from(DTYPES))
    if name not in FEATURE_METHODS:
        student_logits, teacher_logits, labels, classes = logits_and_labels(draw, dtype)
        try:
            method.build({}, {}, classes)
        except CLEAR_ERRORS:
            return "build refused"
        teacher = LogitsAndFeatures(teacher_logits) if cls.uses_teacher else None
        check_loss_and_gradients(method, LogitsAndFeatures(student_logits), teacher, labels, [student_logits])
        return "loss computed"

    batch = draw(st.integers(1, 4))
    stages = draw(st.integers(1, 3))
    teacher_stages = draw(st.one_of(st.just(stages), st.just(stages), st.just(stages), st.integers(1, 3)))
    student_info, teacher_info = BackboneInfo(STUDENT_STAGES[:stages]), BackboneInfo(TEACHER_STAGES[:teacher_stages])
    try:
        request = method.feature_request(student_info, teacher_info)
        student_shapes = draw(feature_shapes(tuple(dict.fromkeys(request.student)), batch))
        teacher_shapes = draw(feature_shapes(tuple(dict.fromkeys(request.teacher)), batch))
        method.build(student_shapes, teacher_shapes, 10)
    except CLEAR_ERRORS:
        return "build refused"
    method.train(draw(st.booleans()))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    student_features = {k: torch.randn(s, generator=generator).to(dtype).requires_grad_() for k, s in student_shapes.items()}
    teacher_features = {k: torch.randn(s, generator=generator).to(dtype) for k, s in teacher_shapes.items()}
    logits = torch.randn(batch, 10, generator=generator).to(dtype)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    check_loss_and_gradients(
        method, LogitsAndFeatures(logits, student_features), LogitsAndFeatures(logits, teacher_features), labels, list(student_features.values())
    )
    return "loss computed"


FUZZ = settings(
    max_examples=100, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
#: Of the 100 examples per method, at least this many must get through options and build to a loss.
MIN_LOSSES_COMPUTED = 30


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_method_gives_a_finite_loss_or_a_clear_error(name):
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(data=st.data())
    def fuzz(data):
        torch.manual_seed(0)
        outcome = run_case(name, data.draw)
        event(outcome)  # shown by pytest --hypothesis-show-statistics
        outcomes[outcome] += 1

    fuzz()
    assert outcomes["loss computed"] >= MIN_LOSSES_COMPUTED, dict(outcomes)


def test_every_registered_method_is_fuzzed():
    assert {"ce", "kd", "dkd", "figkd", "fam", "fam_l2l", "freekd"} <= set(available_methods())

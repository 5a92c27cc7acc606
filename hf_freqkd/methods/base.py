"""What every distillation method is made of.

A method is one ``nn.Module`` subclass in its own file under ``hf_freqkd/methods/``, registered
by name with :func:`register_method`. It declares

* its options, a dataclass extending :class:`MethodOptions` (typed fields, defaults and help text:
  ``hf-freqkd methods`` prints them);
* which named intermediate features of student and teacher it needs (:meth:`feature_request`);
* the trainable modules it owns, created in :meth:`build` once feature shapes are known;

and its ``forward`` returns a dict of named, unweighted loss terms (``{"loss_kd": ...}``). The
:class:`~hf_freqkd.distiller.Distiller` multiplies them by the method's ``weight`` and the warm-up
factor, sums them and logs each one.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..types import BackboneInfo, FeatureRequest, LogitsAndFeatures


@dataclass
class MethodOptions:
    """Options every method has."""

    weight: float = field(
        default=1.0, metadata={"help": "Multiplier of this method's loss terms (>= 0)."}
    )

    def __post_init__(self) -> None:
        require_weight(self.weight, "weight")


def require(condition: bool, option: str, value: Any, expected: str) -> None:
    """Raise a :class:`~hf_freqkd.errors.MethodOptionsError` naming the option, the bad value and what was expected."""
    from ..errors import MethodOptionsError

    if not condition:
        raise MethodOptionsError(f"option '{option}' = {value!r} is invalid: expected {expected}")


def in_dtype_of(tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``tensor`` in the dtype of ``module``'s parameters, so a method's own layers accept features of
    any float dtype (float64, or bf16 without autocast). Under autocast, autocast chooses."""
    parameter = next(module.parameters(), None)
    if parameter is None or tensor.dtype == parameter.dtype or torch.is_autocast_enabled(tensor.device.type):
        return tensor
    return tensor.to(parameter.dtype)


# Beyond these a loss or its gradient overflows float32 (T^2 * weight * ...): tests/methods/test_fuzz.py.
MAX_WEIGHT = 1e4
TEMPERATURE_RANGE = (1e-3, 1e3)


def require_weight(value: Any, option: str) -> None:
    """A multiplier of loss terms: finite, >= 0, at most ``MAX_WEIGHT``."""
    require(math.isfinite(value) and 0 <= value <= MAX_WEIGHT, option, value, f"a finite number >= 0 (at most {MAX_WEIGHT:g})")


def require_temperature(value: Any, option: str) -> None:
    """A softmax temperature: finite, > 0, within ``TEMPERATURE_RANGE``."""
    low, high = TEMPERATURE_RANGE
    require(math.isfinite(value) and low <= value <= high, option, value, f"a finite number > 0 (within [{low:g}, {high:g}])")


class DistillationMethod(nn.Module):
    """Base class of a distillation loss. Subclasses set ``name`` and ``options_class``."""

    name: ClassVar[str]
    options_class: ClassVar[type[MethodOptions]] = MethodOptions
    #: False for methods that only look at the labels (``ce``); a run made of such methods needs no teacher.
    uses_teacher: ClassVar[bool] = True
    #: False for the ground-truth term, which is never scaled by the distillation warm-up.
    warms_up: ClassVar[bool] = True
    #: False for methods that read only the teacher's features: a detector teacher then stops after
    #: its FPN (no head, no NMS) when no method of the run reads its predictions.
    reads_teacher_logits: ClassVar[bool] = True
    #: The tasks (hf_freqkd.tasks) this method applies to. Segmentation means per-pixel logits
    #: (B, K, H, W) and labels (B, H, W) with -100 where ignored; logit methods written for (B, K)
    #: logits list classification only.
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    #: True for a method whose trainable modules do not all feed the loss of every training step (a
    #: branch taken on some steps only). Data-parallel training then makes DDP search each step's
    #: autograd graph for parameters without a gradient (``find_unused_parameters``); without it DDP
    #: would wait for their gradients forever and fail at the next step. An instance may set it
    #: when its options decide. See :attr:`hf_freqkd.distiller.Distiller.leaves_parameters_unused`.
    leaves_parameters_unused: ClassVar[bool] = False

    def __init__(self, options: MethodOptions | None = None):
        super().__init__()
        self.options = options if options is not None else self.options_class()

    @property
    def weight(self) -> float:
        return self.options.weight

    def feature_request(self, student: BackboneInfo, teacher: BackboneInfo | None) -> FeatureRequest:
        """Named features this method needs, chosen from what the two networks offer.

        Called once, before :meth:`build`. ``student.stage_layers`` / ``teacher.stage_layers`` are
        the default stage outputs (timm ``feature_info`` or transformers ``hidden_states.<i>``).
        Features arrive as ``(B, C, H, W)`` maps, ViT tokens included. None by default (logit methods).
        """
        return FeatureRequest()

    def build(
        self,
        student_shapes: dict[str, torch.Size],
        teacher_shapes: dict[str, torch.Size],
        num_classes: int,
    ) -> None:
        """Create trainable modules once the shapes of the requested features are known.

        Called once by the trainer, after a probe forward pass; the modules it creates become part
        of the model the Trainer optimises, checkpoints and wraps for data-parallel training.
        """

    def forward(
        self, student: LogitsAndFeatures, teacher: LogitsAndFeatures | None, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Options parsing: YAML / command-line values -> a validated options dataclass.


def options_from_dict(options_class: type[MethodOptions], values: dict[str, Any], method: str) -> MethodOptions:
    """Build ``options_class`` from a plain dict, rejecting unknown names and wrong types early.

    Values are converted by :func:`hf_freqkd.coercion.coerce`, the rule the top-level config keys
    follow too (``temperature: 1e1`` is the number 10 here as ``learning_rate: 1e-3`` is there).
    Raises :class:`~hf_freqkd.errors.MethodOptionsError`.
    """
    from ..coercion import coerce
    from ..errors import MethodOptionsError

    fields = {f.name: f for f in dataclasses.fields(options_class) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise MethodOptionsError(
            f"method '{method}' has no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(options_class)
    coerced = {}
    for name, value in values.items():
        try:
            coerced[name] = coerce(value, hints[name])
        except TypeError as error:
            raise MethodOptionsError(f"method '{method}' option '{name}' = {value!r} is invalid: {error}") from None
    try:
        return options_class(**coerced)
    except (ValueError, TypeError) as error:  # a custom method's own checks may raise either
        raise MethodOptionsError(f"method '{method}': {error}") from None


def describe_options(options_class: type[MethodOptions]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each option, for ``hf-freqkd methods`` and the README."""
    rows = []
    hints = typing.get_type_hints(options_class)
    for f in dataclasses.fields(options_class):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, _type_name(hints[f.name]), repr(default), f.metadata.get("help", "")))
    return rows


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))

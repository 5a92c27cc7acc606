"""The non-finite loss guard: a NaN / inf loss term stops the run or skips that optimizer update.

``nonfinite_loss: stop`` (the default) raises :class:`NonFiniteLossError` before the step is
applied; ``skip`` leaves the model, its BatchNorm statistics and the optimizer state as they were,
counts the step in ``skipped_steps`` and goes on. Every process takes the same decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from ..errors import TrainingError

logger = logging.getLogger(__name__)

Outputs = TypeVar("Outputs")


class NonFiniteLossError(TrainingError, FloatingPointError):
    """A loss term became NaN or inf and ``nonfinite_loss`` is ``stop``."""


class NonFiniteLossGuard:
    """Mix into a ``transformers.Trainer`` subclass (ahead of ``Trainer``); its ``compute_loss`` runs
    the training forward through :meth:`guarded_forward`. The policy is ``args.nonfinite_loss``
    (``stop`` for arguments without that field)."""

    #: optimizer updates skipped so far (``nonfinite_loss: skip``), logged as ``skipped_steps``
    skipped_steps: int = 0
    _skip_batch = False  # the current micro-batch's loss is left out of the logged loss
    _skip_update = False  # the current optimizer update is dropped

    @property
    def nonfinite_loss(self) -> str:
        return getattr(self.args, "nonfinite_loss", "stop")

    def guarded_forward(
        self, model: nn.Module, forward: Callable[[], Outputs], terms_of: Callable[[Outputs], dict[str, torch.Tensor]]
    ) -> tuple[Outputs, bool]:
        """``(forward(), skipped)``. ``skipped`` is True when one of ``terms_of(outputs)`` is non-finite
        and this update is skipped: the model's buffers are back as they were, and the batch's loss
        must be :meth:`zero_loss`. With ``nonfinite_loss: stop`` a non-finite term raises instead."""
        # A skipped step must leave the model as it was, BatchNorm running statistics included.
        saved_buffers = [b.detach().clone() for b in model.buffers()] if self.nonfinite_loss == "skip" else None
        outputs = forward()
        if not self._nonfinite_terms(terms_of(outputs)):
            return outputs, False
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), saved_buffers):
                buffer.copy_(saved)
        return outputs, True

    def _nonfinite_terms(self, terms: dict[str, torch.Tensor]) -> list[str]:
        """Names of the NaN / inf terms of this batch on any process; stops or marks the update skipped."""
        names = list(terms)
        flags = torch.stack([~torch.isfinite(value.detach()).all() for value in terms.values()]).float()
        if self.accelerator.num_processes > 1:
            # Every process must take the same decision: one skipping its backward alone would hang the others.
            flags = self.accelerator.reduce(flags, reduction="sum")
        bad = [name for name, flag in zip(names, flags.tolist()) if flag > 0]
        if not bad:
            return bad
        step = self.state.global_step + 1
        described = ", ".join(f"'{name}' is {_nonfinite_kind(terms[name])}" for name in bad)
        message = f"loss term{'s' if len(bad) > 1 else ''} {described} at step {step}"
        if self.nonfinite_loss == "stop":
            raise NonFiniteLossError(
                f"{message}; the run stopped before applying that step (nonfinite_loss: stop). Lower the learning rate "
                "or the method's weight, check the teacher's outputs, or set nonfinite_loss=skip to skip such steps"
            )
        logger.warning("%s; skipping this optimizer update (nonfinite_loss: skip)", message)
        self._skip_batch = self._skip_update = True
        return bad

    @staticmethod
    def zero_loss(model: nn.Module) -> torch.Tensor:
        """Zero gradients for every trainable parameter, through no NaN: backward and data-parallel
        gradient reduction run as usual; training_step then drops the gradients."""
        return sum(p.float().sum() for p in model.parameters() if p.requires_grad) * 0.0

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._skip_batch:
            self._skip_batch = False
            # Left out of the logged loss by the Trainer's logging_nan_inf_filter (on by default).
            loss = torch.full_like(loss, float("nan"))
        if self._skip_update and self.accelerator.sync_gradients:
            # The last micro-batch of the update: drop its gradients, so optimizer.step() changes nothing
            # (optimizers leave parameters without a gradient, and their state, untouched).
            self._skip_update = False
            self.skipped_steps += 1
            scaler = getattr(self.accelerator, "scaler", None)
            for parameter in model.parameters():
                if scaler is not None and parameter.grad is not None:
                    parameter.grad.fill_(float("nan"))  # fp16: the GradScaler's own inf check skips the step
                else:
                    parameter.grad = None
        return loss


def _nonfinite_kind(value: torch.Tensor) -> str:
    value = value.detach()
    if torch.isnan(value).any():
        return "nan"
    if torch.isinf(value).any():
        return "inf"
    return "non-finite on another process"

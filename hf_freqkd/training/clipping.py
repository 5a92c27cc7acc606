"""How often gradient clipping acted: the fraction of optimizer steps whose gradient norm exceeded
``max_grad_norm``, so that a run that was mostly clipped says so.

``TrainingArguments`` clips at a norm of 1.0 unless told otherwise, and the research code the
classification recipes reproduce never clips: a recipe that inherits the default is changed on
almost every step without anyone seeing it. The count lives in a stateful callback, saved in
``trainer_state.json`` with each checkpoint, so a resumed run reports the whole run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

logger = logging.getLogger(__name__)

#: above this fraction of clipped steps, the end of training warns that the run was mostly clipped
MOSTLY_CLIPPED = 0.5


class GradientClippingCount(TrainerCallback, ExportableState):
    """Optimizer steps taken and steps whose gradient norm exceeded ``max_grad_norm``."""

    def __init__(self, steps: int = 0, clipped: int = 0):
        self.steps = steps
        self.clipped = clipped

    def state(self) -> dict[str, Any]:
        return {"args": {"steps": self.steps, "clipped": self.clipped}, "attributes": {}}


@dataclass
class ClippingSummary:
    """What a run record, a model card and the end-of-training log say about clipping."""

    max_grad_norm: float
    steps: int
    clipped_steps: int

    @property
    def fraction(self) -> float:
        return self.clipped_steps / self.steps if self.steps else 0.0

    def as_record(self) -> dict[str, Any]:
        return {"max_grad_norm": self.max_grad_norm, "steps": self.steps, "clipped_steps": self.clipped_steps,
                "fraction": round(self.fraction, 4)}

    def sentence(self) -> str:
        if self.max_grad_norm <= 0:
            return "gradient clipping: off (max_grad_norm 0)"
        return (f"gradient clipping at max_grad_norm {self.max_grad_norm:g} acted on {self.clipped_steps} of "
                f"{self.steps} optimizer steps ({100 * self.fraction:.0f} %)")


class GradientClippingMonitor:
    """Mix into a ``transformers.Trainer`` subclass (ahead of ``Trainer``): counts, on every optimizer
    step that clips, whether the pre-clip norm exceeded ``max_grad_norm``."""

    def clipping_count(self) -> GradientClippingCount:
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, GradientClippingCount):
                return callback
        count = GradientClippingCount()
        self.add_callback(count)
        return count

    def _clip_grad_norm(self, model):
        norm = super()._clip_grad_norm(model)
        count = self.clipping_count()
        count.steps += 1
        value = norm.item() if isinstance(norm, torch.Tensor) else float(norm)
        # A non-finite norm is the non-finite guard's business; it is no clipping statistic.
        if value == value and value != float("inf") and value > self.args.max_grad_norm:
            count.clipped += 1
        return norm

    def restore_clipping_count(self, checkpoint: str | None) -> None:
        """Take the counts saved with ``checkpoint`` (transformers restores stateful callbacks only with
        ``restore_callback_states_from_checkpoint``, off by default)."""
        import os

        from transformers import TrainerState

        state_file = os.path.join(checkpoint, "trainer_state.json") if checkpoint else None
        if not state_file or not os.path.isfile(state_file):
            return
        saved = (TrainerState.load_from_json(state_file).stateful_callbacks or {}).get(GradientClippingCount.__name__)
        if isinstance(saved, dict):
            count = self.clipping_count()
            count.steps, count.clipped = saved["args"]["steps"], saved["args"]["clipped"]

    def clipping_summary(self) -> ClippingSummary:
        count = self.clipping_count()
        steps = count.steps if self.args.max_grad_norm > 0 else self.state.global_step
        return ClippingSummary(float(self.args.max_grad_norm), steps, count.clipped)

    def report_clipping(self) -> ClippingSummary:
        """Log how often clipping acted; warn, naming the setting, when it acted on most steps."""
        summary = self.clipping_summary()
        if summary.max_grad_norm > 0 and summary.steps:
            logger.info("%s", summary.sentence())
            if summary.fraction > MOSTLY_CLIPPED:
                logger.warning(
                    "the run was mostly clipped: %s; set max_grad_norm: 0 to train without clipping, as the research code "
                    "of the classification recipes does (docs/recipes.md)", summary.sentence()
                )
        return summary

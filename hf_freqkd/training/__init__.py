"""Pieces a ``transformers.Trainer`` subclass mixes in: atomic checkpoints, the non-finite loss guard,
named loss terms in the logs, how often gradient clipping acted, and datasets that format their own rows.

``DistillationTrainer`` and FreeKD's ``PromptFittingTrainer`` share them. Two of them replace
private Trainer methods; each such override is listed in :data:`PRIVATE_TRAINER_OVERRIDES` and
``tests/training/test_private_overrides.py`` fails if transformers changes one of them.
"""

from .checkpointing import CHECKPOINT_STAGING_DIR, AtomicCheckpoints
from .clipping import ClippingSummary, GradientClippingCount, GradientClippingMonitor
from .datasets import FormattedDatasets
from .loss_terms import LossTermMeans
from .nonfinite import NonFiniteLossError, NonFiniteLossGuard

#: private ``transformers.Trainer`` methods overridden here -> the parameters they are expected to take
PRIVATE_TRAINER_OVERRIDES: dict[str, tuple[str, ...]] = {
    "_save_checkpoint": ("self", "model", "trial"),
    "_get_output_dir": ("self", "trial"),
    "_remove_unused_columns": ("self", "dataset", "description"),
    "_clip_grad_norm": ("self", "model"),
    # hf_freqkd.tune.trainer_search: a trial's settings applied, then what follows them (methods, cache, state)
    "_hp_search_setup": ("self", "trial"),
}

__all__ = [
    "AtomicCheckpoints",
    "CHECKPOINT_STAGING_DIR",
    "ClippingSummary",
    "GradientClippingCount",
    "GradientClippingMonitor",
    "FormattedDatasets",
    "LossTermMeans",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "PRIVATE_TRAINER_OVERRIDES",
]

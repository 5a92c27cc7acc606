"""Evaluation metrics, computed through ``evaluate`` with modules shipped in this package."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

IMAGE_CLASSIFICATION_METRIC = str(Path(__file__).parent / "image_classification")


@lru_cache(maxsize=None)
def load_image_classification_metric():
    """The local top-1 / top-k accuracy module (no Hub access)."""
    import evaluate

    return evaluate.load(IMAGE_CLASSIFICATION_METRIC)


def compute_classification_metrics(eval_prediction, top_k: int = 5) -> dict[str, float]:
    """``compute_metrics`` for the Trainer: accuracy and top-k accuracy from logits and label ids."""
    logits = eval_prediction.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return load_image_classification_metric().compute(
        predictions=np.asarray(logits, dtype=np.float32), references=np.asarray(eval_prediction.label_ids), top_k=top_k
    )

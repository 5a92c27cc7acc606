"""Evaluation metrics, computed through ``evaluate`` with modules shipped in this package."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

IMAGE_CLASSIFICATION_METRIC = str(Path(__file__).parent / "image_classification")
MEAN_IOU_METRIC = str(Path(__file__).parent / "mean_iou")
#: reference value of unlabelled pixels in evaluation labels (see hf_freqkd.data.segmentation)
SEGMENTATION_IGNORE_LABEL = -100


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


@lru_cache(maxsize=None)
def load_mean_iou_metric():
    """The local mean-IoU / pixel-accuracy module (no Hub access)."""
    import evaluate

    return evaluate.load(MEAN_IOU_METRIC)


def segmentation_predictions(logits, labels=None):
    """``preprocess_logits_for_metrics``: class ids ``(B, H, W)`` instead of ``(B, K, H, W)`` scores,
    so evaluation keeps one integer per pixel rather than K floats."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.argmax(dim=1)


def compute_segmentation_metrics(eval_prediction, num_classes: int, ignore_index: int = SEGMENTATION_IGNORE_LABEL) -> dict[str, float]:
    """``compute_metrics`` for segmentation: mIoU, pixel accuracy and mean class accuracy.

    ``predictions`` are class ids ``(N, H, W)`` (see :func:`segmentation_predictions`) or scores
    ``(N, K, H, W)``; ``label_ids`` are ``(N, H, W)`` with ``ignore_index`` where unlabelled.
    """
    predictions = eval_prediction.predictions
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions = np.asarray(predictions)
    if predictions.ndim == 4:
        predictions = predictions.argmax(axis=1)
    scores = load_mean_iou_metric().compute(
        predictions=predictions, references=np.asarray(eval_prediction.label_ids), num_labels=num_classes, ignore_index=ignore_index
    )
    return {name: scores[name] for name in ("mean_iou", "pixel_accuracy", "mean_accuracy")}

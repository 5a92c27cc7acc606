"""Evaluation metrics, computed through ``evaluate`` with modules shipped in this package."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

IMAGE_CLASSIFICATION_METRIC = str(Path(__file__).parent / "image_classification")
MEAN_IOU_METRIC = str(Path(__file__).parent / "mean_iou")
DETECTION_MAP_METRIC = str(Path(__file__).parent / "detection_map")
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


@lru_cache(maxsize=None)
def load_detection_map_metric():
    """The local COCO box mAP module (torchmetrics + pycocotools, no Hub access)."""
    import evaluate

    return evaluate.load(DETECTION_MAP_METRIC)


#: the scores :func:`compute_detection_metrics` returns (-1 where COCO leaves them undefined)
DETECTION_METRIC_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def _unpadded_rows(rows: np.ndarray, class_column: int) -> list[np.ndarray]:
    """Per-image rows without the padding (class < 0) of the collator and of the Trainer's concatenation."""
    return [image[image[:, class_column] >= 0] for image in rows]


def compute_detection_metrics(eval_prediction, num_classes: int | None = None) -> dict[str, float]:
    """``compute_metrics`` for detection: COCO mAP (IoU 0.50:0.95), AP at 0.50 and 0.75, AP by object
    size and recall at 100 detections per image.

    ``predictions`` are ``(N, N_max, 6)`` rows x1, y1, x2, y2, score, class (or a tuple whose first
    item is that array); ``label_ids`` are ``(N, M_max, 5)`` rows class, x1, y1, x2, y2; pixels,
    corners; rows with class < 0 (-100) are padding. ``num_classes``, when given, is checked against
    every class id. A score is -1 where COCO leaves it undefined (no reference box in that group).
    """
    predictions = eval_prediction.predictions
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return detection_scores(*detection_rows(predictions, eval_prediction.label_ids, num_classes))


def detection_rows(predictions, references, num_classes: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Padded detection and reference arrays (see :func:`compute_detection_metrics`), checked, as
    per-image rows without the padding."""
    from ..errors import DataError, ModelError

    predictions = np.asarray(predictions, dtype=np.float32)
    references = np.asarray(references, dtype=np.float32)
    if predictions.ndim != 3 or predictions.shape[-1] != 6:
        raise ModelError(
            f"detection predictions have shape {predictions.shape}: expected (images, detections, 6) rows of "
            "x1, y1, x2, y2, score, class"
        )
    if references.ndim != 3 or references.shape[-1] != 5 or len(references) != len(predictions):
        raise DataError(
            f"detection labels have shape {references.shape}: expected ({len(predictions)}, boxes, 5) rows of "
            f"class, x1, y1, x2, y2 for the predictions of shape {predictions.shape}"
        )
    predictions, references = _unpadded_rows(predictions, 5), _unpadded_rows(references, 0)
    if num_classes is not None:
        for name, rows, class_column, error in (
            ("labels", references, 0, DataError),
            ("predictions", predictions, 5, ModelError),
        ):
            classes = np.unique(np.concatenate([np.zeros(0, np.float32)] + [image[:, class_column] for image in rows]))
            outside = classes[(classes >= num_classes) | (classes != np.round(classes))]
            if outside.size:
                raise error(
                    f"detection {name} hold class ids {outside.tolist()[:5]}: "
                    f"expected integers in 0..{num_classes - 1} (or -100 for padding rows)"
                )
    return predictions, references


def detection_scores(predictions: list[np.ndarray], references: list[np.ndarray]) -> dict[str, float]:
    """COCO scores of per-image detection and reference rows (see :func:`detection_rows`)."""
    scores = load_detection_map_metric().compute(predictions=predictions, references=references)
    return {name: scores[name] for name in DETECTION_METRIC_NAMES}

"""The tasks' ``compute_metrics``, also batch by batch (the Trainer's ``batch_eval_metrics``).

With ``batch_eval_metrics`` the Trainer passes each evaluation batch (gathered from every process) as
it comes, with ``compute_result=True`` on the last one, instead of the whole evaluation set at the
end: memory holds running sums rather than every prediction. What is summed gives exactly the
whole-set scores:

* classification: the number of top-1 and top-k hits;
* segmentation: the (K, K) pixel confusion matrix that mIoU, pixel accuracy and mean class accuracy
  are read from (they are dataset-level scores, not means of per-batch ones);
* detection: each image's detections and reference boxes without padding (COCO mAP ranks the
  detections of every image together, so it is computed once at the end; rows are small next to
  the images they come from).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def _array(values, dtype=None) -> np.ndarray:
    """A batch as a NumPy array: tensors (batch mode) or arrays (whole set); the first of a tuple of outputs."""
    if isinstance(values, (tuple, list)):
        values = values[0]
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


class BatchedMetrics:
    """A task's ``compute_metrics``: called with a whole evaluation set it returns its scores (``whole_set``);
    called as the Trainer does under ``batch_eval_metrics`` (``compute_result=False`` for each batch,
    ``True`` for the last) it adds each batch to an accumulator (``new_accumulator()``, with ``add`` and
    ``result``) and returns the scores of every batch since the last result."""

    def __init__(self, whole_set: Callable[[Any], dict[str, float]], new_accumulator: Callable[[], Any]):
        self.whole_set = whole_set
        self.new_accumulator = new_accumulator
        self._running = None

    def __call__(self, eval_prediction, compute_result: bool | None = None) -> dict[str, float]:
        if compute_result is None:
            return self.whole_set(eval_prediction)
        if self._running is None:
            self._running = self.new_accumulator()
        self._running.add(eval_prediction)
        if not compute_result:
            return {}
        running, self._running = self._running, None
        return running.result()


class ClassificationHits:
    """Top-1 and top-k hits over the batches (the same ranks and ties as the image_classification module)."""

    def __init__(self, top_k: int = 5):
        self.top_k = int(top_k)
        self.top1 = self.topk = self.count = 0

    def add(self, eval_prediction) -> None:
        from . import load_image_classification_metric

        scores = _array(eval_prediction.predictions, np.float32)
        labels = _array(eval_prediction.label_ids, np.int64)
        if len(labels) == 0:
            return
        result = load_image_classification_metric().compute(predictions=scores, references=labels, top_k=self.top_k)
        self.top1 += round(result["accuracy"] * len(labels))
        self.topk += round(result[f"top{self.top_k}_accuracy"] * len(labels))
        self.count += len(labels)

    def result(self) -> dict[str, float]:
        count = max(self.count, 1)
        return {"accuracy": self.top1 / count, f"top{self.top_k}_accuracy": self.topk / count}


class SegmentationConfusion:
    """The pixel confusion matrix over the batches; the mean_iou module's scores of it."""

    def __init__(self, num_classes: int, ignore_index: int):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.counts = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def add(self, eval_prediction) -> None:
        predictions = _array(eval_prediction.predictions)
        if predictions.ndim == 4:
            predictions = predictions.argmax(axis=1)
        module = _mean_iou_module()
        self.counts += module.confusion_matrix(predictions, _array(eval_prediction.label_ids), self.num_classes, self.ignore_index)

    def result(self) -> dict[str, float]:
        scores = _mean_iou_module().scores_from_confusion(self.counts)
        return {name: scores[name] for name in ("mean_iou", "pixel_accuracy", "mean_accuracy")}


def _mean_iou_module():
    """The mean_iou evaluate module's code (its confusion matrix and the scores read from one)."""
    import sys

    from . import load_mean_iou_metric

    return sys.modules[type(load_mean_iou_metric()).__module__]


class DetectionRows:
    """Each image's unpadded detections and references over the batches; COCO mAP of all of them at the end."""

    def __init__(self, num_classes: int | None):
        self.num_classes = num_classes
        self.predictions: list[np.ndarray] = []
        self.references: list[np.ndarray] = []

    def add(self, eval_prediction) -> None:
        from . import detection_rows

        predictions, references = detection_rows(
            _array(eval_prediction.predictions, np.float32), _array(eval_prediction.label_ids, np.float32), self.num_classes
        )
        self.predictions += predictions
        self.references += references

    def result(self) -> dict[str, float]:
        from . import detection_scores

        return detection_scores(self.predictions, self.references)

"""COCO mean average precision of object detection, as an ``evaluate`` module.

Shipped inside hf_freqkd so evaluation never needs the Hub. The scores come from torchmetrics'
``MeanAveragePrecision`` run on the pycocotools backend, i.e. the official COCO evaluation.
"""

import datasets
import evaluate
import numpy as np
import torch

_DESCRIPTION = """
COCO box mAP over a whole evaluation set (pycocotools through torchmetrics' MeanAveragePrecision).

AP of one class at one IoU threshold is the area under its 101-point interpolated
precision-recall curve, detections of every image ranked by score; a detection matches a
reference box of its class when their IoU is at least the threshold. `map` averages AP over the
classes and the ten IoU thresholds 0.50, 0.55, ..., 0.95; `map_50` and `map_75` use one threshold.
`map_small`, `map_medium` and `map_large` only count reference boxes of area < 32^2, 32^2 to 96^2
and > 96^2 pixels (detections of other sizes that match nothing are ignored there too).
`mar_100` is the recall with at most 100 detections per image, averaged like `map`.
Only the 100 highest-scoring detections of an image count.

Rows whose class is negative are padding (the collator and the Trainer pad with -100) and are
dropped first, so padded arrays and ragged lists give the same scores. An image whose rows are all
padding has no objects: its detections can only be false positives.

-1 means "undefined": COCO's value when no reference box falls in the group (for instance
`map_large` with no large object, or every score when the references hold no object at all).
It is kept rather than replaced by 0, which would read as "every object missed", and rather than
NaN, so logs and model cards show COCO's numbers. A class absent from the references is left out
of the class average; its detections are then not counted against any class.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D `float` arrays): one array per image of detection rows
        x1, y1, x2, y2, score, class (absolute pixels, corners); rows with class < 0 are padding.
    references (`list` of 2-D `float` arrays): one array per image of reference rows
        class, x1, y1, x2, y2 (absolute pixels, corners); rows with class < 0 are padding.
    class_metrics (`bool`, defaults to False): also return AP and recall per class.
Returns:
    map, map_50, map_75, map_small, map_medium, map_large, mar_100 (`float`): COCO scores in [0, 1],
        or -1 where undefined (see the description).
    With `class_metrics=True` also:
    classes (`list` of `int`): the class ids present in references or predictions, ascending.
    map_per_class, mar_100_per_class (`list` of `float`): AP (IoU 0.50:0.95) and recall of each of
        `classes`, -1 for a class absent from the references.
Examples:
    >>> metric = evaluate.load("path/to/detection_map")
    >>> metric.compute(predictions=[[[0, 0, 10, 10, 0.9, 1]]], references=[[[1, 0, 0, 10, 10]]])["map"]
    1.0
"""

SCORE_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def image_rows(rows, columns: int, name: str, index: int) -> np.ndarray:
    """One image's rows as a ``(rows, columns)`` float64 array, padding rows (class < 0) dropped."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        return np.zeros((0, columns))
    if rows.ndim != 2 or rows.shape[1] != columns:
        raise ValueError(f"image {index}: {name} rows have shape {rows.shape}: expected (rows, {columns})")
    if not np.isfinite(rows).all():
        raise ValueError(f"image {index}: {name} hold non-finite values: expected finite boxes, scores and classes")
    class_column = 5 if name == "predictions" else 0
    rows = rows[rows[:, class_column] >= 0]
    boxes = rows[:, 0:4] if name == "predictions" else rows[:, 1:5]
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        raise ValueError(
            f"image {index}: {name} hold the box {boxes[inverted][0].tolist()} with x2 < x1 or y2 < y1: "
            "expected x1, y1, x2, y2 corners"
        )
    return rows


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DetectionMap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # Rows per image vary (ragged lists) or are padded: a list of rows per example.
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                }
            ),
        )

    def _compute(self, predictions, references, class_metrics=False):
        from torchmetrics.detection import MeanAveragePrecision

        metric = MeanAveragePrecision(
            iou_type="bbox", backend="pycocotools", box_format="xyxy", class_metrics=bool(class_metrics)
        )
        detections, targets = [], []
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            prediction = torch.as_tensor(image_rows(prediction, 6, "predictions", index), dtype=torch.float32)
            reference = torch.as_tensor(image_rows(reference, 5, "references", index), dtype=torch.float32)
            detections.append(
                {"boxes": prediction[:, :4], "scores": prediction[:, 4], "labels": prediction[:, 5].long()}
            )
            targets.append({"boxes": reference[:, 1:], "labels": reference[:, 0].long()})
        metric.update(detections, targets)
        result = metric.compute()
        scores = {name: float(result[name]) for name in SCORE_NAMES}
        if class_metrics:
            # torchmetrics returns 0-d tensors when there is a single class.
            scores["classes"] = [int(value) for value in result["classes"].reshape(-1)]
            scores["map_per_class"] = [float(value) for value in result["map_per_class"].reshape(-1)]
            scores["mar_100_per_class"] = [float(value) for value in result["mar_100_per_class"].reshape(-1)]
        return scores

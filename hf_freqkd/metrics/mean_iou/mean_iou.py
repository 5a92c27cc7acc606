"""Mean intersection over union and pixel accuracy of semantic segmentation, as an ``evaluate`` module.

Shipped inside hf_freqkd so evaluation never needs the Hub (``evaluate.load("mean_iou")`` does).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Semantic segmentation scores from one confusion matrix accumulated over every pixel of every image
(dataset-level, not a mean of per-image scores). Pixels whose reference is `ignore_index` are left
out of every count, whatever was predicted there.

For class c: IoU_c = |pred = c and ref = c| / |pred = c or ref = c|. A class absent from both the
references and the predictions (union 0) has no IoU: it is NaN in `per_category_iou` and skipped in
`mean_iou`. A class predicted but absent from the references has IoU 0 and counts.
`pixel_accuracy` = correctly labelled pixels / labelled pixels. `mean_accuracy` is the mean over
classes present in the references of |pred = c and ref = c| / |ref = c|.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D `int` arrays): predicted class id per pixel, one array per image.
    references (`list` of 2-D `int` arrays): ground-truth class id per pixel, same shapes.
    num_labels (`int`): number of classes K; references and predictions must lie in [0, K)
        (references may also equal `ignore_index`).
    ignore_index (`int`, defaults to -100): reference value of unlabelled pixels.
Returns:
    mean_iou (`float`): mean IoU over the classes present in references or predictions (NaN if none).
    pixel_accuracy (`float`): fraction of labelled pixels predicted correctly.
    mean_accuracy (`float`): mean per-class accuracy over classes present in the references.
    per_category_iou (`list` of `float`): IoU of each class, NaN where the class is absent from both.
    per_category_accuracy (`list` of `float`): accuracy of each class, NaN where absent from the references.
Examples:
    >>> metric = evaluate.load("path/to/mean_iou")
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, -100]]], num_labels=3)["mean_iou"]
    0.5
"""


def confusion_matrix(predictions, references, num_labels: int, ignore_index: int) -> np.ndarray:
    """(K, K) pixel counts, rows = reference class, columns = predicted class; ignored pixels left out."""
    counts = np.zeros((num_labels, num_labels), dtype=np.int64)
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        prediction, reference = np.asarray(prediction, dtype=np.int64), np.asarray(reference, dtype=np.int64)
        if prediction.shape != reference.shape:
            raise ValueError(f"image {index}: prediction of shape {prediction.shape} but reference of shape {reference.shape}")
        labelled = reference != ignore_index
        reference, prediction = reference[labelled], prediction[labelled]
        for name, values in (("references", reference), ("predictions", prediction)):
            outside = np.unique(values[(values < 0) | (values >= num_labels)])
            if outside.size:
                extra = f" or the ignore_index {ignore_index}" if name == "references" else ""
                raise ValueError(f"image {index}: {name} hold values {outside.tolist()[:5]}: expected class ids in 0..{num_labels - 1}{extra}")
        counts += np.bincount(reference * num_labels + prediction, minlength=num_labels * num_labels).reshape(num_labels, num_labels)
    return counts


def scores_from_confusion(counts: np.ndarray) -> dict:
    intersection = np.diag(counts).astype(np.float64)
    reference_area = counts.sum(axis=1).astype(np.float64)
    union = reference_area + counts.sum(axis=0) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        accuracy = np.where(reference_area > 0, intersection / reference_area, np.nan)
    labelled = counts.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "pixel_accuracy": float(intersection.sum() / labelled) if labelled else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.any(reference_area > 0) else float("nan"),
        "per_category_iou": iou.tolist(),
        "per_category_accuracy": accuracy.tolist(),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                }
            ),
        )

    def _compute(self, predictions, references, num_labels, ignore_index=-100):
        num_labels = int(num_labels)
        if num_labels < 1:
            raise ValueError(f"num_labels = {num_labels} is invalid: expected an integer >= 1")
        return scores_from_confusion(confusion_matrix(predictions, references, num_labels, int(ignore_index)))

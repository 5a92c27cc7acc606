"""Top-1 and top-k accuracy from class scores, as an ``evaluate`` metric module.

Shipped inside hf_freqkd so evaluation never needs the Hub (``evaluate.load("accuracy")`` does).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-1 accuracy (argmax of the scores equals the reference) and top-k accuracy (the reference is
among the k highest scores; k = min(top_k, number of classes)). Ties are broken as argmax breaks
them (lower class index first), so top-1 accuracy equals accuracy.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): class scores (logits or probabilities), one row per example.
    references (`list` of `int`): ground-truth class indices.
    top_k (`int`, defaults to 5): k of the top-k accuracy.
Returns:
    accuracy (`float`): top-1 accuracy in [0, 1].
    top{k}_accuracy (`float`): top-k accuracy in [0, 1], reported under the requested k.
Examples:
    >>> metric = evaluate.load("path/to/image_classification")
    >>> metric.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1], top_k=5)
    {'accuracy': 0.5, 'top5_accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ImageClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, top_k=5):
        scores = np.asarray(predictions, dtype=np.float32)
        labels = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or len(scores) != len(labels):
            raise ValueError(f"predictions must be (N, C) scores for N={len(labels)} references; got shape {scores.shape}")
        k = max(1, min(int(top_k), scores.shape[1]))
        # Rank of the reference: classes scoring higher, plus equal-scoring classes of lower index -
        # the tie rule of argmax, so top-1 accuracy equals accuracy.
        reference_scores = scores[np.arange(len(labels)), labels][:, None]
        lower_index = np.arange(scores.shape[1])[None, :] < labels[:, None]
        rank = ((scores > reference_scores) | ((scores == reference_scores) & lower_index)).sum(axis=1)
        return {
            "accuracy": float((scores.argmax(axis=1) == labels).mean()),
            f"top{int(top_k)}_accuracy": float((rank < k).mean()),
        }

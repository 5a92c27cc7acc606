"""The local ``evaluate`` module for top-1 / top-k accuracy, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_freqkd.metrics import compute_classification_metrics, load_image_classification_metric

# 4 examples, 6 classes. Rank of the reference = number of strictly higher scores.
SCORES = np.array(
    [
        [0.10, 0.50, 0.20, 0.05, 0.10, 0.05],  # label 1: argmax, rank 0
        [0.90, 0.01, 0.02, 0.03, 0.04, 0.00],  # label 5: lowest, rank 5 -> outside the top 5
        [0.30, 0.20, 0.10, 0.00, 0.25, 0.15],  # label 2: rank 4 -> inside the top 5, not the top 3
        [5.00, 1.00, 2.00, 3.00, 4.00, 0.00],  # label 0: argmax (logits, not probabilities)
    ],
    dtype=np.float32,
)
LABELS = np.array([1, 5, 2, 0])


@pytest.fixture(scope="module")
def metric():
    return load_image_classification_metric()


def test_module_is_loaded_from_the_package_and_cached(metric):
    assert type(metric).__name__ == "ImageClassification"
    assert load_image_classification_metric() is metric


def test_top1_and_top5(metric):
    result = metric.compute(predictions=SCORES, references=LABELS, top_k=5)
    assert result == {"accuracy": pytest.approx(0.5), "top5_accuracy": pytest.approx(0.75)}


@pytest.mark.parametrize("top_k, expected", [(2, 0.5), (3, 0.5), (5, 0.75), (6, 1.0)])
def test_other_k(metric, top_k, expected):
    result = metric.compute(predictions=SCORES.tolist(), references=LABELS.tolist(), top_k=top_k)
    assert result[f"top{top_k}_accuracy"] == pytest.approx(expected)
    assert result["accuracy"] == pytest.approx(0.5)


def test_fewer_classes_than_k(metric):
    scores = [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]
    labels = [2, 2, 0]
    result = metric.compute(predictions=scores, references=labels, top_k=5)
    # k is clipped to the 3 classes: every reference is in the "top 5"; reported under the asked k.
    assert result == {"accuracy": pytest.approx(1 / 3), "top5_accuracy": pytest.approx(1.0)}


def test_ties_in_top_k_are_broken_like_argmax(metric):
    # Row 0: label 0 ties class 1 (higher index, ranked after it); class 2 is higher -> rank 1 -> in the top 2.
    # Row 1: label 2 ties class 1 (lower index, ranked before it) behind class 0 -> rank 2 -> outside the top 2.
    scores = [[0.1, 0.1, 0.8, 0.0], [0.5, 0.2, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]
    labels = [0, 2, 0]
    result = metric.compute(predictions=scores, references=labels, top_k=2)
    assert result["top2_accuracy"] == pytest.approx(1 / 3)
    assert result["accuracy"] == pytest.approx(0.0)


def test_top1_equals_accuracy_with_ties(metric):
    scores = [[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.3, 0.3, 0.3]]
    labels = [0, 1, 2]
    result = metric.compute(predictions=scores, references=labels, top_k=1)
    assert result["top1_accuracy"] == result["accuracy"] == pytest.approx(1 / 3)


def test_tie_for_the_top_score_uses_argmax(metric):
    # np.argmax picks the first of tied maxima: class 0, not class 1.
    result = metric.compute(predictions=[[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]], references=[0, 1], top_k=5)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["top5_accuracy"] == pytest.approx(1.0)


def test_compute_classification_metrics_on_eval_prediction():
    prediction = EvalPrediction(predictions=SCORES, label_ids=LABELS)
    assert compute_classification_metrics(prediction, top_k=5) == {
        "accuracy": pytest.approx(0.5),
        "top5_accuracy": pytest.approx(0.75),
    }
    assert compute_classification_metrics(prediction, top_k=2)["top2_accuracy"] == pytest.approx(0.5)


def test_compute_classification_metrics_takes_logits_from_a_tuple():
    # Models returning extra outputs give the Trainer a tuple of arrays; the logits come first.
    other = np.zeros((4, 3), dtype=np.float32)
    prediction = EvalPrediction(predictions=(SCORES, other), label_ids=LABELS)
    assert compute_classification_metrics(prediction, top_k=3) == {
        "accuracy": pytest.approx(0.5),
        "top3_accuracy": pytest.approx(0.5),
    }

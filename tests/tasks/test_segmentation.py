"""The segmentation task: per-pixel evaluation loss, predictions and metrics."""

import numpy as np
import torch
from transformers import EvalPrediction

from hf_freqkd.tasks import get_task
from hf_freqkd.types import LogitsAndFeatures


def test_eval_loss_ignores_unlabelled_pixels():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = 10.0  # class 1 everywhere, confidently
    labels = torch.tensor([[[1, 1], [-100, -100]]])
    assert get_task("segmentation").eval_loss(LogitsAndFeatures(logits), labels) < 1e-3
    labels_wrong = torch.tensor([[[0, -100], [-100, -100]]])
    assert get_task("segmentation").eval_loss(LogitsAndFeatures(logits), labels_wrong) > 9


def test_predictions_keep_one_class_per_pixel():
    logits = torch.randn(2, 4, 3, 3)
    predictions = get_task("segmentation").preprocess_logits_for_metrics(logits, None)
    assert predictions.shape == (2, 3, 3)
    assert torch.equal(predictions, logits.argmax(1))


def test_metrics_are_miou_pixel_and_class_accuracy():
    predictions = np.array([[[0, 1], [1, 1]]])
    labels = np.array([[[0, 1], [0, -100]]])
    metrics = get_task("segmentation").compute_metrics(2, None)(EvalPrediction(predictions=predictions, label_ids=labels))
    assert set(metrics) == {"mean_iou", "pixel_accuracy", "mean_accuracy"}
    assert metrics["pixel_accuracy"] == 2 / 3

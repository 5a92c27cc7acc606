"""The bundled mean-IoU evaluate module against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from hf_freqkd.metrics import compute_segmentation_metrics, load_mean_iou_metric, segmentation_predictions

# 3 x 4 masks, 4 classes; 255 marks two unlabelled pixels (bottom corners); class 3 occurs nowhere.
REFERENCE = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [255, 2, 2, 255]])
PREDICTION = np.array([[0, 1, 1, 1], [0, 2, 1, 1], [2, 2, 0, 0]])


def test_mean_iou_equals_the_hand_computed_value():
    # On the 10 labelled pixels (the predictions 2 and 0 at the ignored corners do not count):
    #   class 0: intersection 2, reference 3, prediction 3 -> union 4 -> IoU 1/2, accuracy 2/3
    #   class 1: intersection 3, reference 3, prediction 5 -> union 5 -> IoU 3/5, accuracy 1
    #   class 2: intersection 2, reference 4, prediction 2 -> union 4 -> IoU 1/2, accuracy 1/2
    #   class 3: absent from both -> skipped
    scores = load_mean_iou_metric().compute(predictions=[PREDICTION], references=[REFERENCE], num_labels=4, ignore_index=255)
    assert scores["mean_iou"] == pytest.approx((1 / 2 + 3 / 5 + 1 / 2) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(7 / 10)
    assert scores["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert scores["per_category_iou"][:3] == pytest.approx([0.5, 0.6, 0.5])
    assert math.isnan(scores["per_category_iou"][3]) and math.isnan(scores["per_category_accuracy"][3])


def test_a_class_predicted_but_absent_from_the_references_counts_as_zero():
    prediction = PREDICTION.copy()
    prediction[0, 0] = 3  # one class-0 pixel predicted as 3
    scores = load_mean_iou_metric().compute(predictions=[prediction], references=[REFERENCE], num_labels=4, ignore_index=255)
    # class 0: intersection 1, reference 3, prediction 2 -> union 4; class 3: IoU 0, now counted.
    assert scores["per_category_iou"] == pytest.approx([1 / 4, 3 / 5, 1 / 2, 0.0])
    assert scores["mean_iou"] == pytest.approx((1 / 4 + 3 / 5 + 1 / 2 + 0) / 4)


def test_counts_accumulate_over_images_not_per_image_means():
    # Class 0 over both images: intersection 2, union 3 -> 2/3, not the per-image mean (1/2 + 1) / 2.
    references = [np.array([[0, 0]]), np.array([[0, 1]])]
    predictions = [np.array([[0, 1]]), np.array([[0, 1]])]
    scores = load_mean_iou_metric().compute(predictions=predictions, references=references, num_labels=2)
    assert scores["per_category_iou"] == pytest.approx([2 / 3, 1 / 2])


def test_out_of_range_references_and_predictions_are_named():
    with pytest.raises(ValueError, match=r"references hold values \[7\]: expected class ids in 0..3 or the ignore_index 255"):
        load_mean_iou_metric().compute(predictions=[PREDICTION], references=[np.where(REFERENCE == 1, 7, REFERENCE)], num_labels=4, ignore_index=255)
    with pytest.raises(ValueError, match=r"predictions hold values \[4\]"):
        load_mean_iou_metric().compute(predictions=[PREDICTION + 2], references=[REFERENCE], num_labels=4, ignore_index=255)


def test_trainer_adapter_takes_argmax_predictions_and_minus_100_labels():
    labels = np.where(REFERENCE == 255, -100, REFERENCE)[None]
    logits = torch.nn.functional.one_hot(torch.as_tensor(PREDICTION), 4).permute(2, 0, 1)[None].float()
    class_ids = segmentation_predictions(logits)
    assert class_ids.shape == (1, 3, 4)
    metrics = compute_segmentation_metrics(EvalPrediction(predictions=class_ids.numpy(), label_ids=labels), num_classes=4)
    assert metrics == pytest.approx({"mean_iou": 1.6 / 3, "pixel_accuracy": 0.7, "mean_accuracy": (2 / 3 + 1 + 1 / 2) / 3})
    # Raw (N, K, H, W) scores give the same result.
    assert compute_segmentation_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=labels), num_classes=4) == metrics

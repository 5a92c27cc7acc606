"""batch_eval_metrics: each task's compute_metrics fed batch by batch, as the Trainer does (tensors,
``compute_result=True`` on the last batch), gives exactly the scores of the whole evaluation set."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from hf_freqkd.tasks import get_task

#: uneven batches, the last one smaller, as an evaluation set rarely divides by the batch size
BATCHES = (7, 7, 7, 3)


def batch_by_batch(compute_metrics, predictions: torch.Tensor, labels: torch.Tensor) -> dict:
    assert "compute_result" in inspect.signature(compute_metrics).parameters  # what the Trainer checks
    start, result = 0, None
    for index, size in enumerate(BATCHES):
        batch = slice(start, start + size)
        result = compute_metrics(EvalPrediction(predictions=predictions[batch], label_ids=labels[batch]), compute_result=index == len(BATCHES) - 1)
        start += size
    return result


def whole_set(compute_metrics, predictions: torch.Tensor, labels: torch.Tensor) -> dict:
    return compute_metrics(EvalPrediction(predictions=predictions.numpy(), label_ids=labels.numpy()))


def test_classification_accuracy_and_top_k_batch_by_batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(sum(BATCHES), 10, generator=generator)
    logits[:3, 2] = logits[:3, 5]  # ties, broken as argmax does
    labels = torch.randint(0, 10, (sum(BATCHES),), generator=generator)
    compute_metrics = get_task("classification").compute_metrics(10, None)
    expected = whole_set(compute_metrics, logits, labels)
    assert batch_by_batch(compute_metrics, logits, labels) == expected
    # The running sums start again at the next evaluation.
    assert batch_by_batch(compute_metrics, logits, labels) == expected
    assert 0 < expected["accuracy"] < expected["top5_accuracy"] < 1


def test_segmentation_miou_batch_by_batch():
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randint(0, 4, (sum(BATCHES), 6, 6), generator=generator)
    labels = torch.randint(0, 4, (sum(BATCHES), 6, 6), generator=generator)
    labels[:, 0] = -100  # unlabelled pixels
    labels[labels == 3] = 2  # class 3 predicted but never present
    compute_metrics = get_task("segmentation").compute_metrics(4, None)
    expected = whole_set(compute_metrics, predictions, labels)
    assert batch_by_batch(compute_metrics, predictions, labels) == expected
    # Not a mean of per-batch scores: those differ.
    per_batch = [whole_set(compute_metrics, predictions[i * 7 : i * 7 + 7], labels[i * 7 : i * 7 + 7])["mean_iou"] for i in range(3)]
    assert np.mean(per_batch) != pytest.approx(expected["mean_iou"])


def test_detection_map_batch_by_batch():
    generator = torch.Generator().manual_seed(0)
    images = sum(BATCHES)
    references = torch.full((images, 4, 5), -100.0)
    predictions = torch.full((images, 6, 6), -100.0)
    for image in range(images):
        count = image % 4  # images with no object too
        corners = torch.rand(count, 2, generator=generator) * 40
        boxes = torch.cat([corners, corners + 8 + torch.rand(count, 2, generator=generator) * 20], dim=1)
        classes = torch.randint(0, 3, (count, 1), generator=generator).float()
        references[image, :count] = torch.cat([classes, boxes], dim=1)
        jitter = boxes + torch.randn(count, 4, generator=generator)
        scores = torch.rand(count, 1, generator=generator)
        predictions[image, :count] = torch.cat([jitter, scores, classes], dim=1)
        predictions[image, count] = torch.tensor([1.0, 1.0, 9.0, 9.0, 0.3, 1.0])  # a false positive
    compute_metrics = get_task("detection").compute_metrics(3, None)
    expected = whole_set(compute_metrics, predictions, references)
    assert batch_by_batch(compute_metrics, predictions, references) == expected
    assert 0 < expected["map"] < 1

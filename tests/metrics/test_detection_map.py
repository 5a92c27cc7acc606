"""The local COCO mAP ``evaluate`` module on hand-made boxes whose scores can be worked out exactly.

COCO's AP of a class at one IoU threshold is the mean over the 101 recall points 0, 0.01, ..., 1 of
the best precision reached at that recall or beyond; ``map`` averages it over the classes and the
ten thresholds 0.50, 0.55, ..., 0.95 (a match needs IoU >= the threshold).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_freqkd.errors import DataError, ModelError
from hf_freqkd.metrics import DETECTION_MAP_METRIC, compute_detection_metrics, load_detection_map_metric

PAD = -100
SCORE_NAMES = {"map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"}
# COCO areas: small < 32^2, medium 32^2..96^2, large > 96^2 pixels.
SMALL_BOX = [10, 10, 20, 20]  # area 100
MEDIUM_BOX = [50, 50, 100, 100]  # area 2500
LARGE_BOX = [0, 0, 200, 200]  # area 40000
# Class 0 small and found, class 1 large and missed: map is the mean of the classes' AP, 1 and 0.
SMALL_FOUND_LARGE_MISSED = {
    "map": 0.5, "map_50": 0.5, "map_75": 0.5, "map_small": 1.0, "map_medium": -1.0, "map_large": 0.0, "mar_100": 0.5
}


def reference(class_id, box):
    return [class_id, *box]


def detection(box, score, class_id):
    return [*box, score, class_id]


def padded(images: list[list[list[float]]], width: int, rows: int) -> np.ndarray:
    """Per-image rows -> (images, rows, width) float32, padded with -100 rows as the Trainer pads."""
    out = np.full((len(images), rows, width), PAD, dtype=np.float32)
    for index, image in enumerate(images):
        if image:
            out[index, : len(image)] = image
    return out


def ragged(images: list[list[list[float]]], width: int) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.float32).reshape(-1, width) for image in images]


@pytest.fixture(scope="module")
def metric():
    return load_detection_map_metric()


def scores_of(metric, predictions, references, **kwargs):
    return metric.compute(predictions=ragged(predictions, 6), references=ragged(references, 5), **kwargs)


def test_module_is_loaded_from_the_package_and_cached(metric):
    assert type(metric).__name__ == "DetectionMap"
    assert (Path(DETECTION_MAP_METRIC) / "detection_map.py").is_file()
    assert load_detection_map_metric() is metric


def test_perfect_predictions_score_one_everywhere(metric):
    references = [[reference(0, SMALL_BOX), reference(1, LARGE_BOX)], [reference(2, MEDIUM_BOX)]]
    predictions = [[detection(SMALL_BOX, 0.9, 0), detection(LARGE_BOX, 0.8, 1)], [detection(MEDIUM_BOX, 0.7, 2)]]
    scores = scores_of(metric, predictions, references)
    assert set(scores) == SCORE_NAMES
    assert all(isinstance(value, float) for value in scores.values())
    assert scores == {name: 1.0 for name in SCORE_NAMES}


@pytest.mark.parametrize(
    "shift, expected_map",
    [
        (20, 0.4),  # IoU 80/120 = 0.667: passes 0.50, 0.55, 0.60, 0.65 -> 4 of 10
        (23, 0.3),  # IoU 77/123 = 0.626: passes 0.50, 0.55, 0.60 -> 3 of 10
    ],
)
def test_a_shifted_box_passes_only_the_iou_thresholds_below_its_iou(metric, shift, expected_map):
    box = [0, 0, 100, 100]  # large (area 10^4); shifting by s along x gives IoU (100 - s) / (100 + s)
    shifted = [shift, 0, 100 + shift, 100]
    scores = scores_of(metric, [[detection(shifted, 0.9, 0)]], [[reference(0, box)]])
    assert scores["map_50"] == 1.0
    assert scores["map_75"] == 0.0
    assert scores["map"] == pytest.approx(expected_map)
    assert scores["map_large"] == pytest.approx(expected_map)
    assert scores["mar_100"] == pytest.approx(expected_map)  # recall 1 at those thresholds, 0 at the others


def test_no_predictions_score_zero_and_absent_sizes_minus_one(metric):
    scores = scores_of(metric, [[]], [[reference(0, MEDIUM_BOX)]])
    undefined = {"map_small", "map_large"}  # no small or large reference box
    assert scores == {name: -1.0 if name in undefined else 0.0 for name in SCORE_NAMES}


def test_small_objects_found_and_large_ones_missed(metric):
    references = [[reference(0, SMALL_BOX), reference(1, LARGE_BOX)]]
    scores = scores_of(metric, [[detection(SMALL_BOX, 0.9, 0)]], references)
    assert scores == SMALL_FOUND_LARGE_MISSED


def test_half_of_one_class_found_follows_the_101_point_interpolation(metric):
    # One class, two objects, one found: precision 1 up to recall 0.5, nothing beyond -> 51 of the
    # 101 recall points have precision 1.
    references = [[reference(0, SMALL_BOX), reference(0, LARGE_BOX)]]
    scores = scores_of(metric, [[detection(SMALL_BOX, 0.9, 0)]], references)
    assert scores["map"] == pytest.approx(51 / 101)
    assert scores["mar_100"] == 0.5


@pytest.mark.parametrize(
    "false_positive_score, expected_map",
    [
        (0.95, 0.5),  # ranked first: precision 0 then 1/2 at recall 1 -> interpolated 1/2 everywhere
        (0.50, 1.0),  # ranked after the hit: full recall is reached at precision 1
    ],
)
def test_a_detection_on_an_image_without_objects_is_a_false_positive(metric, false_positive_score, expected_map):
    references = padded([[reference(0, LARGE_BOX)], []], width=5, rows=2)  # image 1: padding only
    hit, false_positive = detection(LARGE_BOX, 0.9, 0), detection(LARGE_BOX, false_positive_score, 0)
    predictions = padded([[hit], [false_positive]], width=6, rows=3)
    scores = metric.compute(predictions=predictions, references=references)
    assert scores["map"] == pytest.approx(expected_map)
    assert scores["map_50"] == pytest.approx(expected_map)
    assert scores["mar_100"] == 1.0


def test_references_without_any_object_give_minus_one(metric):
    predictions = padded([[detection(LARGE_BOX, 0.9, 0)], []], width=6, rows=1)
    scores = metric.compute(predictions=predictions, references=padded([[], []], width=5, rows=1))
    assert scores == {name: -1.0 for name in SCORE_NAMES}


def test_padding_rows_are_ignored(metric):
    references = [[reference(0, SMALL_BOX), reference(0, LARGE_BOX)], [reference(1, MEDIUM_BOX)]]
    predictions = [
        [detection(SMALL_BOX, 0.9, 0), detection([30, 0, 230, 200], 0.6, 0)],  # second: IoU 170/230 with LARGE_BOX
        [detection([50, 55, 100, 105], 0.8, 1), detection(SMALL_BOX, 0.3, 1)],
    ]
    unpadded = scores_of(metric, predictions, references)
    assert 0 < unpadded["map"] < 1
    trainer_padding = metric.compute(
        predictions=padded(predictions, 6, rows=7), references=padded(references, 5, rows=4)
    )
    assert trainer_padding == unpadded
    # The detector's own padding: zero box, score and class -100.
    model_padding = [image + [[0, 0, 0, 0, PAD, PAD]] * 3 for image in predictions]
    assert scores_of(metric, model_padding, references) == unpadded


def test_class_metrics_lists_each_class(metric):
    references = [[reference(0, SMALL_BOX), reference(1, LARGE_BOX)]]
    predictions = [[detection(SMALL_BOX, 0.9, 0), detection(MEDIUM_BOX, 0.8, 2)]]  # class 2: not in references
    scores = scores_of(metric, predictions, references, class_metrics=True)
    assert scores["classes"] == [0, 1, 2]
    assert scores["map_per_class"] == [1.0, 0.0, -1.0]
    assert scores["mar_100_per_class"] == [1.0, 0.0, -1.0]
    assert scores["map"] == 0.5  # class 2 has no reference box: left out of the mean


def test_malformed_rows_are_named(metric):
    with pytest.raises(ValueError, match=r"image 1: predictions rows have shape \(1, 5\): expected \(rows, 6\)"):
        metric.compute(predictions=[[detection(SMALL_BOX, 0.9, 0)], [[0, 0, 1, 1, 0.5]]], references=[[], []])
    with pytest.raises(ValueError, match=r"image 0: references hold the box \[20.0, 10.0, 10.0, 20.0\] with x2 < x1"):
        metric.compute(predictions=[[]], references=[[reference(0, [20, 10, 10, 20])]])


def test_trainer_adapter_strips_padding_and_returns_the_coco_scores():
    references = [[reference(0, SMALL_BOX), reference(1, LARGE_BOX)], []]
    predictions = [[detection(SMALL_BOX, 0.9, 0)], [detection(SMALL_BOX, 0.2, 0)]]
    label_ids = padded(references, 5, rows=3)
    detections = padded(predictions, 6, rows=4)
    expected = SMALL_FOUND_LARGE_MISSED
    metrics = compute_detection_metrics(EvalPrediction(predictions=detections, label_ids=label_ids), num_classes=2)
    assert metrics == expected
    # Models returning several outputs: the detections come first.
    extra_output = np.zeros((2, 3), dtype=np.float32)
    with_extra_output = EvalPrediction(predictions=(detections, extra_output), label_ids=label_ids)
    assert compute_detection_metrics(with_extra_output) == expected


def test_trainer_adapter_checks_class_ids_against_num_classes():
    label_ids = padded([[reference(2, SMALL_BOX)]], 5, rows=2)
    detections = padded([[detection(SMALL_BOX, 0.9, 0)]], 6, rows=2)
    with pytest.raises(DataError, match=r"detection labels hold class ids \[2.0\]: expected integers in 0..1"):
        compute_detection_metrics(EvalPrediction(predictions=detections, label_ids=label_ids), num_classes=2)
    out_of_range = padded([[detection(SMALL_BOX, 0.9, 2)]], 6, rows=2)
    valid_labels = padded([[reference(0, SMALL_BOX)]], 5, rows=2)
    with pytest.raises(ModelError, match=r"detection predictions hold class ids \[2.0\]"):
        compute_detection_metrics(EvalPrediction(predictions=out_of_range, label_ids=valid_labels), num_classes=2)
    with pytest.raises(ModelError, match=r"detection predictions have shape \(1, 2, 5\)"):
        compute_detection_metrics(EvalPrediction(predictions=detections[..., :5], label_ids=label_ids))

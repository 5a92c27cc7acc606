"""The classification task: data functions, metrics and model-card metric names."""

import numpy as np
from transformers import EvalPrediction

from hf_freqkd.config import DataArguments
from hf_freqkd.data import load_digits_dataset
from hf_freqkd.tasks import get_task


def test_data_functions_find_columns_and_classes():
    data = load_digits_dataset()["train"]
    found = get_task("classification").data_functions(data, DataArguments(dataset="digits"))
    assert (found.image_column, found.label_column, found.num_classes) == ("image", "label", 10)


def test_metrics_are_top1_and_topk_accuracy():
    logits = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]], dtype=np.float32)
    metrics = get_task("classification").compute_metrics(3, None)(EvalPrediction(predictions=logits, label_ids=np.array([0, 1])))
    assert metrics["accuracy"] == 0.5
    assert metrics["top5_accuracy"] == 1.0


def test_card_names_every_topk_metric_present():
    names = get_task("classification").card_metric_names({"eval_accuracy": 0.5, "eval_top3_accuracy": 0.9})
    assert names["eval_accuracy"] == ("accuracy", "Top-1 accuracy")
    assert names["eval_top3_accuracy"] == ("top_3_accuracy", "Top-3 accuracy")

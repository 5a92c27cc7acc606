"""``ce``: the ground-truth term equals plain cross-entropy and needs no teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_freqkd.methods import LogitsAndFeatures
from hf_freqkd.methods.ce import CEOptions, CrossEntropy


def test_equals_plain_cross_entropy():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    loss = CrossEntropy()(LogitsAndFeatures(logits), None, labels)["loss_ce"]
    manual = -(logits.log_softmax(1)[torch.arange(6), labels]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_label_smoothing_matches_torch():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    loss = CrossEntropy(CEOptions(label_smoothing=0.1))(LogitsAndFeatures(logits), None, labels)["loss_ce"]
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6)


def test_needs_no_teacher_and_is_not_warmed_up():
    assert CrossEntropy.uses_teacher is False and CrossEntropy.warms_up is False


def test_per_pixel_cross_entropy_skips_ignored_pixels():
    # Segmentation: (B, K, H, W) logits, (B, H, W) labels, -100 where a pixel has no label.
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, 0] = -100
    loss = CrossEntropy()(LogitsAndFeatures(logits), None, labels)["loss_ce"]
    log_p = logits.log_softmax(1).permute(0, 2, 3, 1)[labels != -100]
    manual = -log_p[torch.arange(len(log_p)), labels[labels != -100]].mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    assert "segmentation" in CrossEntropy.tasks

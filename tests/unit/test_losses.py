"""Losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import BCEWithLogitsLoss, CrossEntropyLoss, DiceLoss, FocalLoss, IoULoss


def test_dice_by_hand():
    # two samples, two classes; softmax of these logits is exactly [0.5, 0.5] and [1, 0]-ish
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    target = torch.tensor([0, 0])
    # class 0: p = [0.5, 1], t = [1, 1] -> inter 1.5, sums 1.5 + 2 -> (3 + 1) / (3.5 + 1)
    # class 1: p = [0.5, 0], t = [0, 0] -> inter 0, sums 0.5 + 0 -> (0 + 1) / (0.5 + 1)
    dice0, dice1 = 4 / 4.5, 1 / 1.5
    expected = 1 - (dice0 + dice1) / 2
    assert DiceLoss(smooth=1.0)(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_iou_by_hand():
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    target = torch.tensor([0, 0])
    # class 0: inter 1.5, union 1.5 + 2 - 1.5 = 2 -> 2.5 / 3 ; class 1: inter 0, union 0.5 -> 1 / 1.5
    expected = 1 - (2.5 / 3 + 1 / 1.5) / 2
    assert IoULoss(smooth=1.0)(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_dice_near_zero_when_all_correct_and_finite_with_absent_class():
    target = torch.tensor([0, 1, 0, 1])
    logits = F.one_hot(target, 3).float() * 50  # class 2 absent from batch and prediction
    loss = DiceLoss(smooth=1.0)(logits, target)
    assert torch.isfinite(loss) and loss.item() < 1e-3


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(16, 4), torch.randint(0, 4, (16,))
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-5
    )


def test_focal_down_weights_easy_examples():
    logits = torch.tensor([[3.0, 0.0]])
    target = torch.tensor([0])
    ce = F.cross_entropy(logits, target).item()
    p = math.exp(-ce)
    assert FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx((1 - p) ** 2 * ce, rel=1e-5)


def test_bce_one_hot_encodes_class_indices():
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = F.binary_cross_entropy_with_logits(logits, F.one_hot(target, 3).float())
    assert BCEWithLogitsLoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_cross_entropy_class_weights_and_smoothing():
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    w = [1.0, 2.0, 0.5]
    expected = F.cross_entropy(logits, target, weight=torch.tensor(w), label_smoothing=0.1)
    assert CrossEntropyLoss(weight=w, label_smoothing=0.1)(logits, target).item() == pytest.approx(
        expected.item(), rel=1e-6
    )

"""trainer.data.counts: class weights `balanced` derives from the training split's counts, by hand."""

from __future__ import annotations

import pytest

from trainer.data.counts import balanced, balanced_values, class_counts
from trainer.errors import UserError
from trainer.losses import BCEWithLogitsLoss, CrossEntropyLoss, DiceLoss, FocalLoss

CLASSES = ["cat", "dog"]


def test_counts_per_task():
    assert class_counts([0, 0, 0, 1], 2, "multiclass") == [3, 1]
    assert class_counts([[0], [0, 1], [1], []], 2, "multilabel") == [2, 2]
    with pytest.raises(UserError, match="decoding every mask"):
        class_counts([0], 2, "segmentation")


def test_weight_is_inverse_frequency_normalised_to_mean_one():
    # 3 cats, 1 dog: 1/3 and 1/1, mean 2/3 -> 0.5 and 1.5
    assert balanced("weight", CrossEntropyLoss, [3, 1], 4, CLASSES, "multiclass") == [0.5, 1.5]
    assert balanced("alpha", FocalLoss, [3, 1], 4, CLASSES, "multiclass") == [0.5, 1.5]


def test_pos_weight_is_negatives_over_positives_and_alpha_the_negatives_share():
    assert balanced("pos_weight", BCEWithLogitsLoss, [3, 1], 4, CLASSES, "multiclass") == [pytest.approx(1 / 3), 3.0]
    assert balanced("alpha", FocalLoss, [1, 3], 4, CLASSES, "multilabel") == [0.75, 0.25]
    # binary: one output, the second class is the positive one -> one number
    assert balanced_values(["pos_weight"], BCEWithLogitsLoss, [0, 0, 0, 1], CLASSES, "binary") == {"pos_weight": 3.0}


def test_a_loss_without_weights_and_an_empty_class_are_refused_with_the_fix():
    with pytest.raises(UserError, match="DiceLoss takes no weight.*data.sampler=balanced"):
        balanced("weight", DiceLoss, [3, 1], 4, CLASSES, "multiclass")
    with pytest.raises(UserError, match="class dog has no images"):
        balanced("weight", CrossEntropyLoss, [4, 0], 4, CLASSES, "multiclass")
    with pytest.raises(UserError, match="class cat has no image without it"):
        balanced("pos_weight", BCEWithLogitsLoss, [4, 1], 4, CLASSES, "multilabel")

"""trainer.data.folds: K-fold cross-validation splits of the training images."""

from __future__ import annotations

from collections import Counter

import pytest

from trainer.data.datasets import load_digits
from trainer.data.folds import fold_indices, fold_splits
from trainer.errors import UserError


def test_folds_are_disjoint_cover_the_training_split_and_are_stratified_and_seeded():
    splits = load_digits()
    targets = splits.train.targets
    folds = fold_indices(targets, 5, seed=0, stratified=True)
    flat = [i for f in folds for i in f]
    assert len(flat) == len(set(flat)) == len(targets)  # disjoint, and together the whole split
    overall = Counter(targets)
    for fold in folds:  # each class spread over the folds within one image
        counts = Counter(targets[i] for i in fold)
        assert all(abs(counts[c] - n / 5) <= 1 for c, n in overall.items())
    assert fold_indices(targets, 5, seed=0, stratified=True) == folds
    assert fold_indices(targets, 5, seed=1, stratified=True) != folds


def test_a_fold_validates_and_the_others_train_while_the_datas_own_val_split_is_held_out():
    splits = load_digits()
    one = fold_splits(splits, 4, 1, seed=0)
    assert set(one.train.indices) | set(one.val.indices) == set(range(len(splits.train)))
    assert not set(one.train.indices) & set(one.val.indices)
    assert len(one.val) in (len(splits.train) // 4, len(splits.train) // 4 + 1)
    i = one.val.indices[0]
    assert one.val.target(0) == splits.train.target(i) and (one.val.load(0) == splits.train.load(i)).all()
    assert one.classes == splits.classes


@pytest.mark.parametrize("folds, fold, words", [(4, 4, "data.fold=4: use 0 to 3"), (5000, 0, "use 2 to")])
def test_an_impossible_fold_is_refused_with_the_range(folds, fold, words):
    with pytest.raises(UserError, match=words):
        fold_splits(load_digits(), folds, fold, seed=0)

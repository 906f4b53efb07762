"""K-fold cross-validation (``data.folds=K data.fold=i``): fold ``i`` of the training images becomes this
run's validation split and the other K - 1 folds its training split. Folds are stratified by class
(multiclass, binary; plain shuffled folds for the other tasks), seeded by ``seed``, disjoint, and
together they are the training split. The data's own validation split (a val/ folder, or the share
``data.val_split`` held out) takes no part: it stays the final test of the chosen setting."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from trainer.config.tasks import task_named
from trainer.data.datasets import Splits
from trainer.data.images import ImageSet
from trainer.errors import UserError

log = logging.getLogger("trainer")


class FoldImages(ImageSet):
    """Some images of another image set, by index (a fold, or all folds but one)."""

    def __init__(self, base: ImageSet, indices: Sequence[int]) -> None:
        self.base, self.indices = base, [int(i) for i in indices]
        self.targets = [base.targets[i] for i in self.indices]
        self.task, self.num_classes = base.task, base.num_classes
        if hasattr(base, "paths"):
            self.paths = [base.paths[i] for i in self.indices]  # type: ignore[attr-defined]
        if hasattr(base, "names"):  # images inside a container (shards, an Arrow data set)
            self.names = [base.names[i] for i in self.indices]  # type: ignore[attr-defined]

    def load(self, index: int) -> torch.Tensor:
        return self.base.load(self.indices[index])

    def target(self, index: int) -> Any:
        return self.base.target(self.indices[index])

    def __getattr__(self, name: str) -> Any:  # per-image readers of the base set (jpeg, mask), by our index
        if name in ("base", "indices"):
            raise AttributeError(name)
        value = getattr(self.base, name)
        if callable(value):
            return lambda index, *a, **k: value(self.indices[index], *a, **k)
        if isinstance(value, (list, tuple, torch.Tensor)) and len(value) == len(self.base):  # one item an image
            return value[self.indices] if isinstance(value, torch.Tensor) else [value[i] for i in self.indices]
        return value


def fold_indices(targets: list[Any], folds: int, seed: int, stratified: bool) -> list[list[int]]:
    """The K folds of ``range(len(targets))``: disjoint, seeded, stratified by class when asked."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(targets)
    if folds < 2 or folds > n:
        raise UserError(f"data.folds={folds}: use 2 to {n} (the training split has {n} images), or null: off.")
    if stratified:
        counts = torch.bincount(torch.tensor([int(t) for t in targets]))
        if int(counts[counts > 0].min()) < folds:
            stratified = False  # a class smaller than K cannot be in every fold: plain folds, said in the log
            log.warning("data.folds=%d: a class has fewer images than folds; the folds are not stratified", folds)
    splitter = (StratifiedKFold if stratified else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    labels = [int(t) for t in targets] if stratified else [0] * n
    return [sorted(held.tolist()) for _, held in splitter.split(list(range(n)), labels)]


def fold_splits(splits: Splits, folds: int, fold: int, seed: int) -> Splits:
    """Fold ``fold`` of ``folds`` as the validation split, the rest as training (see the module's docstring)."""
    if not 0 <= fold < folds:
        raise UserError(f"data.fold={fold}: use 0 to {folds - 1} with data.folds={folds}.")
    held = fold_indices(splits.train.targets, folds, seed, task_named(splits.task).one_label)[fold]
    keep = sorted(set(range(len(splits.train))) - set(held))
    out = Splits(FoldImages(splits.train, keep), FoldImages(splits.train, held), splits.classes, splits.task)
    log.info(
        "cross-validation: fold %d of %d, %d training / %d validation images (the data's own %d validation "
        "images are held out as the final test)",
        fold,
        folds,
        len(keep),
        len(held),
        len(splits.val),
    )
    return out

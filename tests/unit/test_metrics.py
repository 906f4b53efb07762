"""Every value `Metrics` reports, per task, held to scikit-learn on the same predictions: on ordinary
batches and on batches whose first batch is classified perfectly (where torchmetrics' compute groups
once merged top-5 into top-1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from trainer.metrics import Metrics

C = 7  # more than 5 classes: multiclass reports top5
BATCHES, BATCH = 4, 24


def _batches(task: str, first_perfect: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(BATCHES):
        if task == "multiclass":
            y = torch.arange(BATCH) % C
            y = y[torch.randperm(BATCH, generator=g)]
            logits = torch.randn(BATCH, C, generator=g)
            if i == 0 and first_perfect:
                logits[torch.arange(BATCH), y] += 10.0
            else:
                logits[torch.arange(BATCH), y] += 0.8  # better than chance, far from perfect
        elif task == "binary":
            y = torch.arange(BATCH) % 2
            logits = torch.randn(BATCH, generator=g) + (y * 2 - 1) * (6.0 if i == 0 and first_perfect else 0.5)
        elif task == "multilabel":
            y = (torch.rand(BATCH, C, generator=g) < 0.4).long()
            y[0], y[1] = 1, 0  # every label has both values
            logits = torch.randn(BATCH, C, generator=g) + (y * 2 - 1) * (6.0 if i == 0 and first_perfect else 0.5)
        else:  # segmentation: (N, C, H, W) logits, (N, H, W) labels
            y = torch.randint(0, C, (3, 5, 8), generator=g)
            y[0, 0, :C] = torch.arange(C)
            logits = torch.randn(3, C, 5, 8, generator=g)
            logits.scatter_add_(1, y[:, None], torch.full((3, 1, 5, 8), 10.0 if i == 0 and first_perfect else 0.8))
        out.append((logits, y))
    return out


def _ours(task: str, batches, ignore_index=None):
    m = Metrics(task, C if task != "binary" else 2, torch.device("cpu"), ignore_index)
    for logits, y in batches:
        m.update(logits, y)
    return m.compute()


def _close(ours, expected, name):
    np.testing.assert_allclose(
        np.asarray(ours, dtype=float), np.asarray(expected, dtype=float), atol=1e-5, err_msg=name
    )


@pytest.mark.parametrize("first_perfect", [False, True], ids=["ordinary", "first-batch-perfect"])
def test_multiclass_values_equal_sklearn(first_perfect):
    batches = _batches("multiclass", first_perfect)
    scalars, per, cm = _ours("multiclass", batches)
    logits = torch.cat([b[0] for b in batches]).numpy()
    y = torch.cat([b[1] for b in batches]).numpy()
    pred = logits.argmax(1)
    labels = list(range(C))
    top5 = skm.top_k_accuracy_score(y, logits, k=5, labels=labels)
    assert top5 > skm.accuracy_score(y, pred) + 0.05  # the data make the two differ
    _close(scalars["val/acc"], skm.accuracy_score(y, pred), "acc")
    _close(scalars["val/top5"], top5, "top5")
    _close(scalars["val/f1_macro"], skm.f1_score(y, pred, average="macro", labels=labels), "f1_macro")
    _close(per["precision"], skm.precision_score(y, pred, average=None, labels=labels, zero_division=0), "precision")
    _close(per["recall"], skm.recall_score(y, pred, average=None, labels=labels, zero_division=0), "recall")
    _close(cm.numpy(), skm.confusion_matrix(y, pred, labels=labels), "confusion")
    assert set(scalars) == {"val/acc", "val/top5", "val/f1_macro"}


@pytest.mark.parametrize("first_perfect", [False, True], ids=["ordinary", "first-batch-perfect"])
def test_binary_values_equal_sklearn(first_perfect):
    batches = _batches("binary", first_perfect)
    scalars, per, cm = _ours("binary", batches)
    p = torch.cat([b[0] for b in batches]).sigmoid().numpy()
    y = torch.cat([b[1] for b in batches]).numpy()
    pred = (p > 0.5).astype(int)
    _close(scalars["val/acc"], skm.accuracy_score(y, pred), "acc")
    _close(scalars["val/f1"], skm.f1_score(y, pred), "f1")
    _close(scalars["val/auroc"], skm.roc_auc_score(y, p), "auroc")
    _close(per["precision"], [skm.precision_score(y, pred)], "precision")
    _close(per["recall"], [skm.recall_score(y, pred)], "recall")
    _close(cm.numpy(), skm.confusion_matrix(y, pred, labels=[0, 1]), "confusion")
    assert set(scalars) == {"val/acc", "val/f1", "val/auroc"}


@pytest.mark.parametrize("first_perfect", [False, True], ids=["ordinary", "first-batch-perfect"])
def test_multilabel_values_equal_sklearn(first_perfect):
    batches = _batches("multilabel", first_perfect)
    scalars, per, cm = _ours("multilabel", batches)
    p = torch.cat([b[0] for b in batches]).sigmoid().numpy()
    y = torch.cat([b[1] for b in batches]).numpy()
    pred = (p > 0.5).astype(int)
    _close(scalars["val/mAP"], skm.average_precision_score(y, p, average="macro"), "mAP")
    _close(scalars["val/f1_macro"], skm.f1_score(y, pred, average="macro"), "f1_macro")
    _close(scalars["val/acc"], np.mean([skm.accuracy_score(y[:, j], pred[:, j]) for j in range(C)]), "acc")
    _close(per["precision"], skm.precision_score(y, pred, average=None, zero_division=0), "precision")
    _close(per["recall"], skm.recall_score(y, pred, average=None, zero_division=0), "recall")
    _close(per["ap"], skm.average_precision_score(y, p, average=None), "ap")
    assert cm is None and set(scalars) == {"val/mAP", "val/f1_macro", "val/acc"}


@pytest.mark.parametrize("ignore_index", [None, 255])
@pytest.mark.parametrize("first_perfect", [False, True], ids=["ordinary", "first-batch-perfect"])
def test_segmentation_values_equal_sklearn(first_perfect, ignore_index):
    batches = _batches("segmentation", first_perfect)
    if ignore_index is not None:  # a border of pixels nobody labelled
        for _, y in batches:
            y[:, :, -1] = ignore_index
    scalars, per, cm = _ours("segmentation", batches, ignore_index)
    pred = torch.cat([b[0].argmax(1).reshape(-1) for b in batches]).numpy()
    y = torch.cat([b[1].reshape(-1) for b in batches]).numpy()
    keep = y != ignore_index if ignore_index is not None else np.ones_like(y, dtype=bool)
    pred, y = pred[keep], y[keep]
    labels = list(range(C))
    _close(scalars["val/mIoU"], skm.jaccard_score(y, pred, average="macro", labels=labels), "mIoU")
    _close(scalars["val/dice"], skm.f1_score(y, pred, average="macro", labels=labels), "dice")
    _close(scalars["val/acc"], skm.accuracy_score(y, pred), "acc")
    _close(per["iou"], skm.jaccard_score(y, pred, average=None, labels=labels, zero_division=0), "iou")
    _close(per["precision"], skm.precision_score(y, pred, average=None, labels=labels, zero_division=0), "precision")
    _close(per["recall"], skm.recall_score(y, pred, average=None, labels=labels, zero_division=0), "recall")
    _close(cm.numpy(), skm.confusion_matrix(y, pred, labels=labels), "confusion")

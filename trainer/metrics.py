"""Validation metrics per task (torchmetrics), accumulated on the device and read once per epoch.

Scalar names (``val/...``, any of them can be ``checkpoint.monitor``):

- multiclass: ``acc`` (top-1), ``top5`` (more than 5 classes), ``f1_macro``
- binary: ``acc``, ``f1``, ``auroc``
- multilabel: ``mAP`` (macro average precision), ``f1_macro`` and ``acc`` (per label, threshold 0.5)
- segmentation: ``mIoU``, ``dice`` (macro, per pixel), ``acc`` (pixel accuracy)

plus ``loss``. Per class: precision and recall (and IoU in segmentation); a confusion matrix for
multiclass, binary and segmentation (pixels).
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config.tasks import task_named

Built = tuple[dict[str, Any], dict[str, Any], Any]  # scalars, per-class metrics, confusion matrix (or None)


def _multiclass(c: int, common: dict[str, Any]) -> Built:
    from torchmetrics import classification as tmc

    scalars = {
        "acc": tmc.MulticlassAccuracy(c, average="micro", **common),
        "f1_macro": tmc.MulticlassF1Score(c, average="macro", **common),
    }
    if c > 5:
        scalars["top5"] = tmc.MulticlassAccuracy(c, top_k=5, average="micro", **common)
    per = {
        "precision": tmc.MulticlassPrecision(c, average="none", **common),
        "recall": tmc.MulticlassRecall(c, average="none", **common),
    }
    return scalars, per, tmc.MulticlassConfusionMatrix(c, **common)


def _binary(c: int, common: dict[str, Any]) -> Built:
    from torchmetrics import classification as tmc

    scalars = {
        "acc": tmc.BinaryAccuracy(**common),
        "f1": tmc.BinaryF1Score(**common),
        "auroc": tmc.BinaryAUROC(**common),
    }
    per = {"precision": tmc.BinaryPrecision(**common), "recall": tmc.BinaryRecall(**common)}
    return scalars, per, tmc.BinaryConfusionMatrix(**common)


def _multilabel(c: int, common: dict[str, Any]) -> Built:
    from torchmetrics import classification as tmc

    scalars = {
        "mAP": tmc.MultilabelAveragePrecision(c, average="macro", **common),
        "f1_macro": tmc.MultilabelF1Score(c, average="macro", **common),
        "acc": tmc.MultilabelAccuracy(c, average="macro", **common),
    }
    per = {
        "precision": tmc.MultilabelPrecision(c, average="none", **common),
        "recall": tmc.MultilabelRecall(c, average="none", **common),
        "ap": tmc.MultilabelAveragePrecision(c, average="none", **common),
    }
    return scalars, per, None


def _segmentation(c: int, common: dict[str, Any]) -> Built:
    from torchmetrics import classification as tmc

    pixels = {"multidim_average": "global", **common}
    scalars = {
        "mIoU": tmc.MulticlassJaccardIndex(c, average="macro", **common),
        "dice": tmc.MulticlassF1Score(c, average="macro", **pixels),
        "acc": tmc.MulticlassAccuracy(c, average="micro", **pixels),
    }
    per = {
        "iou": tmc.MulticlassJaccardIndex(c, average="none", **common),
        "precision": tmc.MulticlassPrecision(c, average="none", **pixels),
        "recall": tmc.MulticlassRecall(c, average="none", **pixels),
    }
    return scalars, per, tmc.MulticlassConfusionMatrix(c, **common)


BUILDERS = {"multiclass": _multiclass, "binary": _binary, "multilabel": _multilabel, "segmentation": _segmentation}


class Metrics:
    """``update(logits, target)`` per batch; ``compute()`` -> (scalars, per-class values, confusion matrix)."""

    def __init__(self, task: str, num_classes: int, device: torch.device, ignore_index: int | None = None) -> None:
        self.task, self.num_classes = task_named(task), num_classes
        common: dict[str, Any] = {"validate_args": False}
        if self.task.per_pixel:
            common["ignore_index"] = ignore_index
        # torchmetrics is imported here, not at the top: at import it loads scipy.signal and matplotlib
        # (its audio metrics and plots), a second of a run's start before its first step
        from torchmetrics import MetricCollection

        scalars, per, self.confusion = BUILDERS[self.task.name](num_classes, common)
        # compute_groups=False: torchmetrics would otherwise merge metrics whose states happen to be equal
        # after the first batch (top-1 and top-5 when batch 1 is all correct) and compute one from the other's.
        self.scalars = MetricCollection(scalars, compute_groups=False).to(device)
        self.per_class = MetricCollection(per, compute_groups=False).to(device)
        if self.confusion is not None:
            self.confusion = self.confusion.to(device)

    def _inputs(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        if self.task.per_pixel:
            return logits.argmax(1), target.long()
        if self.task.one_output:
            return logits.reshape(-1).sigmoid(), target.reshape(-1).long()
        if self.task.sigmoid:
            return logits.sigmoid(), target.long()
        return logits, target.long()

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = self._inputs(logits, target)
        self.scalars.update(preds, target)
        self.per_class.update(preds, target)
        if self.confusion is not None:
            self.confusion.update(preds, target)

    def compute(self) -> tuple[dict[str, float], dict[str, list[float]], torch.Tensor | None]:
        scalars = {f"val/{k}": float(v) for k, v in self.scalars.compute().items()}
        per = {k: [float(x) for x in v.reshape(-1).tolist()] for k, v in self.per_class.compute().items()}
        cm = self.confusion.compute().cpu() if self.confusion is not None else None
        return scalars, per, cm

"""The four tasks, declared once: what differs between them is a property of a :class:`Task`, and the
rest of the code asks the task (``task_named(name).per_pixel``) instead of comparing its name.

A run's task is stored as its name (``data.task``, a checkpoint's ``task``); :func:`task_named` turns
the name into the object. A new task is one more entry in :data:`TASKS` plus what it needs where a
property is not enough: its metrics (``trainer/metrics.py``), its targets (``data/images.py``), its head
(``models/backbones.py``) and what ``predict`` writes (``use/predict.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from trainer.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[str, ...]  # what the val pass reports (the first is always val/loss)
    monitor: str  # checkpoint.monitor=auto
    sigmoid: bool  # each output its own probability (binary, multilabel); else a softmax over the classes
    per_pixel: bool = False  # a class for every pixel (segmentation): masks, not labels
    one_label: bool = False  # each image exactly one class: stratified splits, balanced sampling, mistakes
    soft_labels: bool = False  # targets may be class distributions: mixup, cutmix, a teacher's probabilities
    one_output: bool = False  # one logit, the probability of the second class (binary)

    def outputs(self, num_classes: int) -> int:
        """The model's outputs (per pixel, for segmentation) for ``num_classes`` classes."""
        return 1 if self.one_output else num_classes

    def scored(self, classes: list[T]) -> list[T]:
        """The class (or a per-class value) each output stands for: per-class metrics and probabilities
        are named by these."""
        return [classes[1]] if self.one_output else list(classes)

    def metric_names(self, num_classes: int) -> list[str]:
        """The val metrics of a run with ``num_classes`` classes (top-5 only above 5 classes)."""
        return [m for m in self.metrics if m != "val/top5" or num_classes > 5]

    def probabilities(self, logits: Any) -> Any:
        """Logits ``(N, C, ...)`` -> probabilities: a sigmoid per output (and for a lone output, such as
        a one-channel mask), or a softmax over dim 1."""
        logits = logits.float()
        return logits.sigmoid() if self.sigmoid or logits.shape[1] == 1 else logits.softmax(dim=1)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "multiclass",
            ("val/loss", "val/acc", "val/top5", "val/f1_macro"),
            "val/acc",
            sigmoid=False,
            one_label=True,
            soft_labels=True,
        ),
        Task(
            "binary",
            ("val/loss", "val/acc", "val/f1", "val/auroc"),
            "val/acc",
            sigmoid=True,
            one_label=True,
            one_output=True,
        ),
        Task("multilabel", ("val/loss", "val/mAP", "val/f1_macro", "val/acc"), "val/mAP", sigmoid=True),
        Task(
            "segmentation", ("val/loss", "val/mIoU", "val/dice", "val/acc"), "val/mIoU", sigmoid=False, per_pixel=True
        ),
    )
}


def task_named(name: str) -> Task:
    """The task called ``name`` (a config's ``data.task``, a checkpoint's ``task``)."""
    try:
        return TASKS[str(name)]
    except KeyError:
        raise UserError(f"task {name!r} is not one of {', '.join(TASKS)}: set data.task to one of them.") from None

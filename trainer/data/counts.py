"""How many training images each class has, and the class weights ``balanced`` derives from them:
``loss.weight=balanced`` (cross_entropy, nll), ``loss.pos_weight=balanced`` (bce) and
``loss.alpha=balanced`` (focal).

- ``weight``, and ``alpha`` of a softmax focal loss: inverse class frequency, normalised to mean 1
  (a class with half the average count weighs 2).
- ``pos_weight``, and ``alpha`` of a sigmoid focal loss: per class, how the positives compare with the
  negatives: ``negatives / positives`` for pos_weight (torch's meaning), ``negatives / all`` for alpha
  (the weight of the positive term, in [0, 1]). A binary task has one output: one number.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from trainer.config.tasks import task_named
from trainer.errors import UserError

log = logging.getLogger("trainer")

WEIGHT_KEYS = ("weight", "pos_weight", "alpha")


def class_counts(targets: list[Any], num_classes: int, task: str) -> list[int]:
    """Images per class (multiclass, binary) or positives per class (multilabel) of a split's targets."""
    if task_named(task).per_pixel:
        raise UserError(
            "loss weights =balanced count images per class; for segmentation that would mean decoding "
            "every mask to count pixels. Give the weights by hand (loss.weight=[...]), one per class."
        )
    counts = torch.zeros(num_classes, dtype=torch.long)
    for t in targets:
        if isinstance(t, (list, tuple)):  # multilabel: the image's classes
            counts[list(t)] += 1
        else:
            counts[int(t)] += 1
    return counts.tolist()


def balanced(key: str, loss_class: type, counts: list[int], total: int, classes: list[str], task: str) -> list[float]:
    """The values of ``loss.<key>=balanced`` for this loss and these counts (see the module's docstring)."""
    if key not in inspect.signature(loss_class).parameters:
        raise UserError(
            f"loss.{key}=balanced: {loss_class.__name__} takes no {key} (class weights go to "
            "loss=cross_entropy or nll as weight, bce as pos_weight, focal as alpha). Drop it, or use "
            "data.sampler=balanced, which balances the classes for every loss."
        )
    kind = task_named(task)
    sigmoid = key == "pos_weight" or (key == "alpha" and kind.sigmoid)
    missing = [c for c, n in zip(classes, counts) if n == 0]
    everywhere = [c for c, n in zip(classes, counts) if sigmoid and not kind.one_label and n >= total]
    if missing or everywhere:
        raise UserError(
            f"loss.{key}=balanced: class {', '.join((missing or everywhere)[:5])} has "
            f"{'no images' if missing else 'no image without it'} in the training split, so it has no "
            "balanced weight. Add images, or give the weights by hand."
        )
    if not sigmoid:
        inverse = [1.0 / n for n in counts]
        mean = sum(inverse) / len(inverse)
        return [round(w / mean, 6) for w in inverse]
    positives = kind.scored(counts)  # binary: one output, the second class
    if key == "pos_weight":
        return [round((total - n) / n, 6) for n in positives]
    return [round((total - n) / total, 6) for n in positives]


def balanced_values(
    keys: list[str], loss_class: type, targets: list[Any], classes: list[str], task: str
) -> dict[str, Any]:
    """``{key: values}`` for each loss key given as ``balanced``, logged with the counts they come from."""
    if not keys:
        return {}
    counts = class_counts(targets, len(classes), task)
    out = {}
    for key in keys:
        values = balanced(key, loss_class, counts, len(targets), classes, task)
        out[key] = values[0] if task_named(task).one_output and key != "weight" else values
        shown = list(zip(classes, counts))[-len(values) :]  # binary: the positive class only
        log.info(
            "loss.%s=balanced from the training split's counts (class images -> weight): %s",
            key,
            ", ".join(f"{c} {n} -> {v:.3g}" for (c, n), v in zip(shown, values)),
        )
    return out

"""The errors to look at after `evaluate` (multiclass and binary): every misclassified image in
errors.csv, worst first (by its loss, ``-log p(true class)``), the worst of them as a picture
(errors.png: the image, its true and predicted class and the predicted probability), and the class
pairs the model confuses most, for the printout."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.runs.csvcells import SafeWriter

SHOWN = 16  # images in errors.png


@dataclass
class Mistake:
    index: int  # in the scored set's order
    name: str  # the file, or "val #i" for images held in memory
    true: str
    predicted: str
    probability: float  # of the predicted class
    loss: float  # -log p(true class)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(N, C)``: softmax, or for one sigmoid output (binary) ``[1 - p, p]``."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = logits.sigmoid()
        return torch.cat([1 - p, p], dim=1)
    return logits.softmax(dim=1)


def find_mistakes(probs: torch.Tensor, targets: torch.Tensor, names: list[str], classes: list[str]) -> list[Mistake]:
    """Every image whose most probable class is not its own, worst (highest loss) first."""
    predicted = probs.argmax(dim=1)
    true_p = probs.gather(1, targets.view(-1, 1)).squeeze(1).clamp_min(1e-12)
    wrong = (predicted != targets).nonzero().flatten().tolist()
    rows = [
        Mistake(
            i,
            names[i],
            classes[int(targets[i])],
            classes[int(predicted[i])],
            float(probs[i, predicted[i]]),
            -math.log(float(true_p[i])),
        )
        for i in wrong
    ]
    return sorted(rows, key=lambda m: (-m.loss, m.index))


def most_confused(mistakes: list[Mistake], n: int = 5) -> list[tuple[str, str, int]]:
    """(true, predicted, images) of the most frequent confusions."""
    pairs = Counter((m.true, m.predicted) for m in mistakes)
    return [(t, p, k) for (t, p), k in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def write_errors_csv(mistakes: list[Mistake], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = SafeWriter(f)
        writer.writerow(["path", "true", "predicted", "probability", "loss"])
        for m in mistakes:
            writer.writerow([m.name, m.true, m.predicted, f"{m.probability:.6f}", f"{m.loss:.6f}"])


def errors_png(mistakes: list[Mistake], image_of: Callable[[int], torch.Tensor]) -> bytes:
    """The worst ``SHOWN`` mistakes in a grid (readable at 100%), or a note when there are none."""
    from trainer.runs.plots import image_grid_png

    shown = mistakes[:SHOWN]
    titles = [f"true: {m.true}\npred: {m.predicted} ({m.probability:.2f})" for m in shown]
    return image_grid_png([image_of(m.index) for m in shown], titles, "no misclassified images" if not shown else "")


# ---------------------------------------------------------------------- segmentation

SEG_SHOWN = 8  # images in lowest_iou.png


def image_iou(pred: torch.Tensor, true: torch.Tensor, ignore_index: int | None) -> float:
    """One image's IoU: the mean over the classes in its true or predicted mask of intersection over
    union (pixels at ``ignore_index`` left out); 1.0 for an image with nothing left to score."""
    keep = true != ignore_index if ignore_index is not None else torch.ones_like(true, dtype=torch.bool)
    pred, true = pred[keep], true[keep]
    classes = torch.unique(torch.cat([pred, true]))
    ious = [float(((pred == c) & (true == c)).sum()) / float(((pred == c) | (true == c)).sum()) for c in classes]
    return sum(ious) / len(ious) if ious else 1.0


class SegmentationScores:
    """Receives ``evaluate``'s ``(logits, masks)`` batches (``append``, as a list would): each image's IoU,
    and the predicted masks of the ``shown`` lowest (the rest are not kept: a val split's logits can be large)."""

    def __init__(self, ignore_index: int | None, shown: int = SEG_SHOWN) -> None:
        self.ignore_index, self.shown = ignore_index, shown
        self.ious: list[float] = []
        self.masks: dict[int, torch.Tensor] = {}

    def append(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, true = batch
        for pred, mask in zip(logits.argmax(1).to(torch.uint8), true.long()):
            index = len(self.ious)
            self.ious.append(image_iou(pred.long(), mask, self.ignore_index))
            self.masks[index] = pred
            if len(self.masks) > self.shown:  # drop the highest-IoU mask kept
                del self.masks[max(self.masks, key=lambda i: (self.ious[i], i))]

    def __len__(self) -> int:
        return len(self.ious)

    def lowest(self) -> list[int]:
        return sorted(range(len(self.ious)), key=lambda i: (self.ious[i], i))


def write_iou_csv(scores: SegmentationScores, names: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = SafeWriter(f)
        writer.writerow(["path", "iou"])
        for i in scores.lowest():
            writer.writerow([names[i], f"{scores.ious[i]:.6f}"])


def lowest_iou_png(
    scores: SegmentationScores, names: list[str], sample_of: Callable[[int], tuple], classes: int
) -> bytes:
    """The lowest-IoU images, one row each: the image, its true mask and the predicted one."""
    from trainer.runs.plots import segmentation_rows_png

    shown = [i for i in scores.lowest() if i in scores.masks][: scores.shown]
    rows = []
    for i in shown:
        image, true = sample_of(i)
        rows.append((image, true, scores.masks[i], f"{Path(names[i]).name}  IoU {scores.ious[i]:.3f}"))
    return segmentation_rows_png(rows, classes, scores.ignore_index)

"""The errors to look at after `evaluate` (multiclass and binary): every misclassified image in
errors.csv, worst first (by its loss, ``-log p(true class)``), the worst of them as a picture
(errors.png: the image, its true and predicted class and the predicted probability), and the class
pairs the model confuses most, for the printout."""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

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
        writer = csv.writer(f)
        writer.writerow(["path", "true", "predicted", "probability", "loss"])
        for m in mistakes:
            writer.writerow([m.name, m.true, m.predicted, f"{m.probability:.6f}", f"{m.loss:.6f}"])


def errors_png(mistakes: list[Mistake], image_of: Callable[[int], torch.Tensor]) -> bytes:
    """The worst ``SHOWN`` mistakes in a grid (readable at 100%), or a note when there are none."""
    from trainer.runs.plots import image_grid_png

    shown = mistakes[:SHOWN]
    titles = [f"true: {m.true}\npred: {m.predicted} ({m.probability:.2f})" for m in shown]
    return image_grid_png([image_of(m.index) for m in shown], titles, "no misclassified images" if not shown else "")

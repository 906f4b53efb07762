"""What a model is scored with, built from a config without any training part: the data, the model,
the loss, the loaders (with the input spec), the device and precision. ``build_parts`` (loop/build.py)
makes them; ``evaluate`` scores with them alone, and a training run is these parts plus what training
needs. ``score_split`` is the one val pass, for both."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config.tasks import task_named
from trainer.data.datasets import Splits
from trainer.data.images import BadImageLog
from trainer.data.loaders import Loaders
from trainer.distributed import collectives as dist
from trainer.loop.steps import ImageInputs, autocast_for, val_precision
from trainer.metrics import Metrics
from trainer.models import BuiltModel

Scores = tuple[dict[str, float], dict[str, list[float]], torch.Tensor | None]


@dataclass
class Parts:
    splits: Splits
    built: BuiltModel
    loss_fn: torch.nn.Module
    loaders: Loaders
    device: torch.device
    precision: str
    ignore_index: int | None
    bad_images: BadImageLog
    channels_last: bool = False
    eval_precision: str = "fp32"  # fp32 | same (as ``precision``)

    @property
    def classes(self) -> list[str]:
        return self.splits.classes

    @property
    def task(self) -> str:
        return self.splits.task

    def evaluate(self, keep: list[Any] | None = None, tta: str = "none") -> Scores:
        """The model's loss and metrics over the val split, as the run scores it each epoch (its val
        precision and memory layout); ``keep`` receives each batch's ``(logits, targets)``; ``tta=flip``:
        the logits averaged with the mirrored images' (``with_tta``)."""
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        model = self.built.model.to(device=self.device, memory_format=memory_format).eval()
        self.loss_fn.to(self.device)
        metrics = Metrics(self.task, len(self.classes), self.device, self.ignore_index)
        batches = ImageInputs(self.loaders, self.device, memory_format).val()
        autocast = autocast_for(self.device.type, val_precision(self.precision, self.eval_precision))
        forward = with_tta(model, tta, task_named(self.task).per_pixel)
        return score_split(forward, batches, self.loss_fn, metrics, autocast, self.bad_images, self.device, keep)


TTA = ("none", "flip")


def with_tta(forward: Callable[[torch.Tensor], torch.Tensor], tta: str, per_pixel: bool) -> Callable:
    """``forward``, or (``tta=flip``) the mean of its logits on the images and on their mirror images (a
    mask's logits mirrored back first): test-time augmentation for ``evaluate`` and ``predict``."""
    if tta == "none":
        return forward

    def averaged(x: torch.Tensor) -> torch.Tensor:
        mirrored = forward(torch.flip(x, dims=[-1])).float()
        return (forward(x).float() + (torch.flip(mirrored, dims=[-1]) if per_pixel else mirrored)) / 2

    return averaged


@torch.no_grad()
def score_split(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Any],
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    metrics: Metrics,
    autocast: Callable[[], Any],
    bad_images: BadImageLog,
    device: torch.device,
    keep: list[Any] | None = None,
) -> Scores:
    """Loss and the task's metrics over ``batches`` (summed over every process); per-class values; the
    confusion matrix. Unreadable images go to ``bad_images``."""
    loss_sum, total = torch.zeros((), device=device), 0
    for x, y, *bad in batches:
        if bad and bad[0]:
            bad_images.note(bad[0])
        if x.shape[0] == 0:
            continue
        with autocast():
            out = forward(x)
        loss_sum += loss_fn(out.float(), y) * y.shape[0]
        metrics.update(out, y)
        total += y.shape[0]
        if keep is not None:
            keep.append((out.detach().float().cpu(), y.cpu()))
    scalars, per_class, confusion = metrics.compute()
    sums = dist.all_sum(torch.stack([loss_sum.float(), torch.tensor(float(total), device=device)]))
    return {"val/loss": float(sums[0].item()) / max(1.0, float(sums[1].item())), **scalars}, per_class, confusion

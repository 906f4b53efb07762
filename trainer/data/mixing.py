"""MixUp / CutMix on each training batch (``data.mixup``, ``data.cutmix``: Beta alphas), torchvision v2's.

The targets become soft (the mixed one-hot labels), which the loss takes as they are; evaluation and
its metrics see the plain images and labels. Each batch's draw is seeded by (seed, epoch, batch), so a
resumed run mixes exactly as an unbroken one.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.data.transforms import sample_seed

_BATCH_STREAM = 2**40  # keeps these seeds apart from the per-sample ones (index < 2**40)


class NoMixing:
    enabled = False

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y


class BatchMixing(NoMixing):
    enabled = True

    def __init__(self, mixup: float, cutmix: float, num_classes: int, seed: int) -> None:
        from torchvision.transforms import v2

        ops: list[Any] = []
        if mixup:
            ops.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix:
            ops.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        self.op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)  # both: one of them per batch
        self.seed = seed

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):  # the draws are on the CPU generator; the run's stream is kept
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, _BATCH_STREAM + batch))
            return self.op(x, y)


def build_mixing(mixup: float, cutmix: float, num_classes: int, seed: int, loss_fn: Any) -> NoMixing:
    """The batch mixing of data.mixup / data.cutmix, after checking that the loss takes soft targets."""
    if not (mixup or cutmix):
        return NoMixing()
    from trainer.errors import UserError

    logits = torch.zeros(2, num_classes)
    try:
        loss_fn(logits, torch.full((2, num_classes), 1.0 / num_classes))
    except Exception as e:  # noqa: BLE001 - any refusal of soft targets is the same user mistake
        raise UserError(
            f"data.mixup / data.cutmix make soft targets (mixed one-hot labels), which this loss "
            f"({type(loss_fn).__name__}) does not take ({type(e).__name__}). Use loss=cross_entropy, focal or kl_div."
        ) from None
    return BatchMixing(mixup, cutmix, num_classes, seed)

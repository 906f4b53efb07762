"""Losses with one contract: ``loss(logits, target) -> scalar``.

``logits`` is ``(N, C)``; ``target`` is either class indices ``(N,)`` (multiclass) or a float
tensor shaped like the logits (one-hot, multilabel or soft targets). Every loss here starts
from logits, so the model never ends in a softmax/sigmoid layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def as_one_hot(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Class indices -> one-hot floats shaped like ``logits``; float targets pass through."""
    if target.dtype in (torch.int64, torch.int32, torch.uint8, torch.int16):
        return F.one_hot(target.long(), logits.shape[1]).to(logits.dtype)
    return target.to(logits.dtype)


def _optional_tensor(values: Sequence[float] | None) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(list(values), dtype=torch.float32)


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy; ``weight`` per class and ``label_smoothing`` as in torch."""

    def __init__(self, weight: Sequence[float] | None = None, label_smoothing: float = 0.0,
                 ignore_index: int = -100) -> None:
        super().__init__()
        self.register_buffer("weight", _optional_tensor(weight), persistent=False)
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight,
                               label_smoothing=self.label_smoothing, ignore_index=self.ignore_index)


class BCEWithLogitsLoss(nn.Module):
    """Sigmoid BCE per class; class-index targets are one-hot encoded first."""

    def __init__(self, pos_weight: Sequence[float] | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", _optional_tensor(pos_weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, as_one_hot(target, logits),
                                                  pos_weight=self.pos_weight)


def soft_dice_per_class(probs: torch.Tensor, one_hot: torch.Tensor, smooth: float) -> torch.Tensor:
    """Soft Dice coefficient of each class over the batch (and any spatial dims): shape (C,)."""
    dims = [d for d in range(probs.ndim) if d != 1]
    intersection = (probs * one_hot).sum(dims)
    total = probs.sum(dims) + one_hot.sum(dims)
    return (2.0 * intersection + smooth) / (total + smooth)


class DiceLoss(nn.Module):
    """1 - mean soft Dice over classes, from softmax probabilities vs one-hot targets.

    ``smooth`` keeps a class that is absent from both prediction and batch at Dice 1 (no NaN).
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        probs = logits.softmax(dim=1)
        return 1.0 - soft_dice_per_class(probs, as_one_hot(target, logits), self.smooth).mean()


class DiceBCELoss(nn.Module):
    """``dice_weight`` x soft Dice loss + ``bce_weight`` x binary cross-entropy."""

    def __init__(self, smooth: float = 1.0, dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        self.dice = DiceLoss(smooth)
        self.bce = BCEWithLogitsLoss()
        self.dice_weight, self.bce_weight = dice_weight, bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)


class IoULoss(nn.Module):
    """1 - mean soft Jaccard (IoU) over classes, from softmax probabilities vs one-hot targets."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        probs = logits.softmax(dim=1)
        one_hot = as_one_hot(target, logits)
        dims = [d for d in range(probs.ndim) if d != 1]
        intersection = (probs * one_hot).sum(dims)
        union = probs.sum(dims) + one_hot.sum(dims) - intersection
        return 1.0 - ((intersection + self.smooth) / (union + self.smooth)).mean()


class FocalLoss(nn.Module):
    """Softmax focal loss: ``-alpha_t (1 - p_t)^gamma log p_t``, averaged over the batch."""

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", _optional_tensor(alpha), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = logits.float().log_softmax(dim=1)
        one_hot = as_one_hot(target, log_p)
        log_pt = (log_p * one_hot).sum(1)
        loss = -((1.0 - log_pt.exp()).clamp(min=0.0) ** self.gamma) * log_pt
        if self.alpha is not None:
            loss = loss * (one_hot * self.alpha).sum(1)
        return loss.mean()

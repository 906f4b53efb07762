"""Losses with one contract: ``loss(logits, target) -> scalar``, for every task each one serves.

``logits`` are the model's raw outputs: ``(N, C)`` for classification, ``(N, 1)`` for a binary
task, ``(N, C, H, W)`` for segmentation. ``target`` is either class indices (``(N,)`` or
``(N, H, W)``, integer) or a float tensor shaped like the logits (multi-hot for multilabel,
0/1 for binary, soft targets). Every loss starts from logits, so the model never ends in a
softmax or sigmoid layer.

How probabilities are made depends on the task, which the run sets (``loss.task``):
``multiclass`` and ``segmentation`` use a softmax over classes, ``multilabel`` and ``binary`` a
sigmoid per output. Integer targets equal to ``ignore_index`` (e.g. 255 in segmentation masks)
count nowhere. Region losses (Dice, IoU, Tversky) are computed per class over the whole batch and
averaged over classes; ``smooth`` keeps a class that is absent from both prediction and target at
a perfect score, so empty masks and absent classes give finite values and gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config.settings import TASKS
from trainer.config.tasks import TASKS as TASK_KINDS

SOFTMAX_TASKS = tuple(name for name, task in TASK_KINDS.items() if not task.sigmoid)


def _optional_tensor(values: Sequence[float] | float | None) -> torch.Tensor | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        return torch.tensor(float(values))
    return torch.as_tensor(list(values), dtype=torch.float32)


def _per_class(t: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    """A (C,) tensor shaped to broadcast along dim 1 of an ``ndim`` tensor."""
    if t is None or t.ndim == 0:
        return t
    return t.view(1, -1, *([1] * (ndim - 2)))


def as_one_hot(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Class indices -> one-hot floats shaped like ``logits``; float targets pass through."""
    if target.dtype.is_floating_point:
        return target.to(logits.dtype).reshape(logits.shape)
    if logits.shape[1] == 1:  # binary task given 0/1 indices
        return target.to(logits.dtype).reshape(logits.shape)
    one_hot = F.one_hot(target.long().clamp(min=0), logits.shape[1]).to(logits.dtype)
    return one_hot.movedim(-1, 1) if one_hot.ndim > 2 else one_hot


class TaskLoss(nn.Module):
    """Base of our losses: the task decides softmax vs sigmoid; ignore_index masks targets out."""

    tasks: tuple[str, ...] = TASKS

    def __init__(self, ignore_index: int | None = None, task: str = "multiclass") -> None:
        super().__init__()
        self.ignore_index, self.task = ignore_index, task

    @property
    def sigmoid(self) -> bool:
        return self.task not in SOFTMAX_TASKS

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.sigmoid else logits.softmax(dim=1)

    def dense(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(one-hot / float target shaped like logits, valid mask broadcastable to it or None)."""
        valid = None
        if not target.dtype.is_floating_point and self.ignore_index is not None:
            keep = target != self.ignore_index  # no host sync: the mask is used even when all is valid
            valid = keep.reshape(keep.shape[0], 1, *keep.shape[1:]).to(logits.dtype)
            target = torch.where(keep, target, torch.zeros_like(target))
        return as_one_hot(target, logits), valid


def masked_mean(loss: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``loss`` over the entries whose target is not ignore_index (all of them without a mask)."""
    if valid is None:
        return loss.mean()
    valid = valid.expand_as(loss)
    return (loss * valid).sum() / valid.sum().clamp(min=1.0)


def soft_dice_per_class(
    probs: torch.Tensor, one_hot: torch.Tensor, smooth: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft Dice coefficient of each class over the batch (and any spatial dims): shape (C,)."""
    if valid is not None:
        probs, one_hot = probs * valid, one_hot * valid
    dims = [d for d in range(probs.ndim) if d != 1]
    intersection = (probs * one_hot).sum(dims)
    total = probs.sum(dims) + one_hot.sum(dims)
    return (2.0 * intersection + smooth) / (total + smooth)


def tversky_per_class(
    probs: torch.Tensor,
    one_hot: torch.Tensor,
    alpha: float,
    beta: float,
    smooth: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tversky index per class: TP / (TP + alpha FP + beta FN), soft counts, smoothed. Shape (C,)."""
    if valid is not None:
        probs, one_hot = probs * valid, one_hot * valid
    dims = [d for d in range(probs.ndim) if d != 1]
    tp = (probs * one_hot).sum(dims)
    fp = (probs * (1 - one_hot)).sum(dims)
    fn = ((1 - probs) * one_hot).sum(dims)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


class CrossEntropyLoss(TaskLoss):
    """Softmax cross-entropy; ``weight`` per class, ``label_smoothing`` and ``ignore_index`` as in torch.

    Takes class indices or soft targets (probabilities shaped like the logits).
    """

    tasks = SOFTMAX_TASKS

    def __init__(
        self,
        weight: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int | None = None,
        task: str = "multiclass",
    ) -> None:
        super().__init__(ignore_index, task)
        self.register_buffer("weight", _optional_tensor(weight), persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(
            logits.float(), target, weight=self.weight, label_smoothing=self.label_smoothing, ignore_index=ignore
        )


class NLLLoss(TaskLoss):
    """Negative log-likelihood of log_softmax(logits): cross-entropy written the classic way."""

    tasks = SOFTMAX_TASKS

    def __init__(
        self, weight: Sequence[float] | None = None, ignore_index: int | None = None, task: str = "multiclass"
    ) -> None:
        super().__init__(ignore_index, task)
        self.register_buffer("weight", _optional_tensor(weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.nll_loss(logits.float().log_softmax(dim=1), target.long(), weight=self.weight, ignore_index=ignore)


class BCEWithLogitsLoss(TaskLoss):
    """Sigmoid binary cross-entropy per output; class indices are one-hot encoded first.

    ``pos_weight``: one number per class (or one number), weighting the positive term.
    """

    def __init__(
        self,
        pos_weight: Sequence[float] | float | None = None,
        ignore_index: int | None = None,
        task: str = "multiclass",
    ) -> None:
        super().__init__(ignore_index, task)
        self.register_buffer("pos_weight", _optional_tensor(pos_weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        dense, valid = self.dense(logits, target)
        loss = F.binary_cross_entropy_with_logits(
            logits, dense, reduction="none", pos_weight=_per_class(self.pos_weight, logits.ndim)
        )
        return masked_mean(loss, valid)


class DiceLoss(TaskLoss):
    """1 - mean soft Dice over classes (softmax, or sigmoid for multilabel / binary)."""

    def __init__(self, smooth: float = 1.0, ignore_index: int | None = None, task: str = "multiclass") -> None:
        super().__init__(ignore_index, task)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        dense, valid = self.dense(logits, target)
        return 1.0 - soft_dice_per_class(self.probs(logits), dense, self.smooth, valid).mean()


class DiceBCELoss(TaskLoss):
    """``dice_weight`` x soft Dice loss + ``bce_weight`` x binary cross-entropy."""

    def __init__(
        self,
        smooth: float = 1.0,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        ignore_index: int | None = None,
        task: str = "multiclass",
    ) -> None:
        super().__init__(ignore_index, task)
        self.dice = DiceLoss(smooth, ignore_index, task)
        self.bce = BCEWithLogitsLoss(ignore_index=ignore_index, task=task)
        self.dice_weight, self.bce_weight = dice_weight, bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)


class IoULoss(TaskLoss):
    """1 - mean soft Jaccard (IoU) over classes."""

    def __init__(self, smooth: float = 1.0, ignore_index: int | None = None, task: str = "multiclass") -> None:
        super().__init__(ignore_index, task)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        dense, valid = self.dense(logits, target)
        # Jaccard = TP / (TP + FP + FN): the Tversky index with alpha = beta = 1
        return 1.0 - tversky_per_class(self.probs(logits), dense, 1.0, 1.0, self.smooth, valid).mean()


class TverskyLoss(TaskLoss):
    """1 - mean Tversky index: ``alpha`` weighs false positives, ``beta`` false negatives.

    alpha = beta = 0.5 is Dice; beta > alpha favours recall (small structures, rare positives).
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        smooth: float = 1.0,
        ignore_index: int | None = None,
        task: str = "multiclass",
    ) -> None:
        super().__init__(ignore_index, task)
        self.alpha, self.beta, self.smooth = alpha, beta, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        dense, valid = self.dense(logits, target)
        ti = tversky_per_class(self.probs(logits), dense, self.alpha, self.beta, self.smooth, valid)
        return 1.0 - ti.mean()


class FocalTverskyLoss(TverskyLoss):
    """mean over classes of ``(1 - Tversky index) ** gamma``; gamma < 1 focuses on hard classes."""

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 0.75,
        smooth: float = 1.0,
        ignore_index: int | None = None,
        task: str = "multiclass",
    ) -> None:
        super().__init__(alpha, beta, smooth, ignore_index, task)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        dense, valid = self.dense(logits, target)
        ti = tversky_per_class(self.probs(logits), dense, self.alpha, self.beta, self.smooth, valid)
        # clamped: d/dx x**gamma is infinite at 0 for gamma < 1 (a perfect prediction)
        return ((1.0 - ti).clamp(min=1e-6) ** self.gamma).mean()


class FocalLoss(TaskLoss):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, averaged.

    Softmax form for multiclass / segmentation (``alpha``: one weight per class, or null); sigmoid
    form per output for multilabel / binary (``alpha``: weight of positives, negatives get 1 - alpha;
    or one weight per class).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | float | None = None,
        ignore_index: int | None = None,
        task: str = "multiclass",
    ) -> None:
        super().__init__(ignore_index, task)
        self.gamma = gamma
        self.register_buffer("alpha", _optional_tensor(alpha), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        dense, valid = self.dense(logits, target)
        alpha = _per_class(self.alpha, logits.ndim)
        if self.sigmoid:
            ce = F.binary_cross_entropy_with_logits(logits, dense, reduction="none")
            p_t = torch.exp(-ce)
            loss = (1.0 - p_t).clamp(min=0.0) ** self.gamma * ce
            if alpha is not None:
                loss = loss * (dense * alpha + (1 - dense) * (1 - alpha) if alpha.ndim == 0 else alpha)
            return masked_mean(loss, valid)
        log_p = logits.log_softmax(dim=1)
        log_pt = (log_p * dense).sum(1, keepdim=True)
        loss = -((1.0 - log_pt.exp()).clamp(min=0.0) ** self.gamma) * log_pt
        if alpha is not None:
            loss = loss * (dense * alpha).sum(1, keepdim=True)
        return masked_mean(loss, valid)


class ProbabilityLoss(TaskLoss):
    """torch's regression losses (``l1``, ``mse``, ``smooth_l1``) between probabilities and targets.

    ``mse`` on softmax probabilities vs one-hot targets is the Brier score.
    """

    KINDS = {"l1": F.l1_loss, "mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss}

    def __init__(
        self, kind: str = "mse", beta: float = 1.0, ignore_index: int | None = None, task: str = "multiclass"
    ) -> None:
        super().__init__(ignore_index, task)
        if kind not in self.KINDS:
            raise ValueError(f"kind={kind!r}: use one of {', '.join(self.KINDS)}")
        self.kind, self.beta = kind, beta

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        dense, valid = self.dense(logits, target)
        fn = self.KINDS[self.kind]
        kwargs = {"beta": self.beta} if self.kind == "smooth_l1" else {}
        return masked_mean(fn(self.probs(logits), dense, reduction="none", **kwargs), valid)


class KLDivLoss(TaskLoss):
    """KL(target || softmax(logits)) for soft targets (distillation, mixup, label smoothing).

    Class indices become one-hot, smoothed by ``smoothing`` (then it equals label-smoothed cross
    entropy minus the targets' entropy). Averaged over samples (and pixels).
    """

    tasks = SOFTMAX_TASKS

    def __init__(self, smoothing: float = 0.0, ignore_index: int | None = None, task: str = "multiclass") -> None:
        super().__init__(ignore_index, task)
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        dense, valid = self.dense(logits, target)
        if not target.dtype.is_floating_point and self.smoothing:
            dense = dense * (1 - self.smoothing) + self.smoothing / logits.shape[1]
        kl = F.kl_div(logits.log_softmax(dim=1), dense, reduction="none").sum(1, keepdim=True)
        return masked_mean(kl, valid)


# ------------------------------------------------------------------ which loss serves which task

# torch losses named directly by ``loss._target_``: the tasks they serve as they are, or why not.
TORCH_LOSSES: dict[str, tuple[tuple[str, ...], str]] = {
    "torch.nn.CrossEntropyLoss": (SOFTMAX_TASKS, ""),
    "torch.nn.BCEWithLogitsLoss": (("multilabel", "binary"), ""),
    "torch.nn.NLLLoss": ((), "it expects log-probabilities, and the model outputs logits: use loss=nll"),
    "torch.nn.BCELoss": ((), "it expects probabilities, and the model outputs logits: use loss=bce"),
    "torch.nn.CTCLoss": ((), "it scores sequence alignments (speech, OCR lines), not images"),
    "torch.nn.MarginRankingLoss": ((), "it ranks pairs of inputs; this trainer feeds one image per target"),
    "torch.nn.TripletMarginLoss": ((), "it compares anchor/positive/negative embeddings, not class targets"),
    "torch.nn.TripletMarginWithDistanceLoss": ((), "it compares anchor/positive/negative embeddings"),
    "torch.nn.CosineEmbeddingLoss": ((), "it compares pairs of embeddings, not class targets"),
    "torch.nn.HingeEmbeddingLoss": ((), "it scores pairwise distances, not class targets"),
    "torch.nn.PoissonNLLLoss": ((), "it models counts (regression), not classes"),
    "torch.nn.GaussianNLLLoss": ((), "it models a mean and a variance (regression), not classes"),
    "torch.nn.MSELoss": ((), "on raw logits it does not train a classifier: use loss=mse (on probabilities)"),
    "torch.nn.L1Loss": ((), "on raw logits it does not train a classifier: use loss=l1 (on probabilities)"),
    "torch.nn.SmoothL1Loss": ((), "on raw logits it does not train a classifier: use loss=smooth_l1"),
    "torch.nn.HuberLoss": ((), "on raw logits it does not train a classifier: use loss=smooth_l1"),
    "torch.nn.KLDivLoss": ((), "it expects log-probabilities: use loss=kl_div"),
}


def options_for(task: str) -> list[str]:
    """The loss options (conf/loss/*.yaml) whose loss serves ``task``, from each loss's own ``tasks``."""
    import yaml

    from trainer.config.schema import CONF_DIR
    from trainer.config.targets import locate

    options = []
    for path in sorted(Path(CONF_DIR, "loss").glob("*.yaml")):
        target = str(yaml.safe_load(path.read_text()).get("_target_"))
        if loss_fits(locate(target), target, task) is None:
            options.append(path.stem)
    return options


def loss_fits(loss_fn: Any, target: str, task: str) -> str | None:
    """None when ``loss_fn`` serves ``task``; else why not (for the error message)."""
    tasks: tuple[str, ...] | None = getattr(loss_fn, "tasks", None)
    reason = ""
    if target in TORCH_LOSSES:
        tasks, reason = TORCH_LOSSES[target]
    elif loss_fn is None:  # not built yet: only torch's losses are known by name
        return None
    if tasks is None:  # a user's own loss that does not declare its tasks: trusted
        return None
    if task in tasks:
        return None
    if reason:
        return reason
    serves = ", ".join(tasks)
    return f"it serves {serves} tasks" if serves else "it serves none of this trainer's tasks"

"""Parameter groups for the optimizer, and the schedules that need the run's length.

Groups: backbone / head, each split into decay and no-decay (norm layers and biases never get
weight decay). A group's lr is ``base_lr x lr_mult``; schedules scale every group alike.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

# Keys of a scheduler config that are ours, not the scheduler's constructor's.
SCHEDULER_KEYS = ("interval",)
# Keys of an optimizer config that shape the parameter groups, not the optimizer's constructor.
OPTIMIZER_KEYS = ("backbone_lr_mult", "layer_decay")
INTERVALS = ("step", "epoch")


def param_groups(model: nn.Module, head_names: set[str], base_lr: float, weight_decay: float,
                 backbone_lr_mult: float = 1.0, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Trainable parameters in groups by part (backbone/head), weight decay, and lr scale.

    A group's lr is ``base_lr x lr_mult``; for the backbone ``lr_mult = backbone_lr_mult``, times
    ``layer_decay ** (depth of the head - depth of the layer)`` with layer-wise decay. Frozen
    parameters are left out: they get no state, no weight decay, no update.
    """
    ids: dict[str, int] = {}
    if layer_decay is not None:
        from trainer.models import layer_ids

        if not 0.0 < float(layer_decay) <= 1.0:
            from trainer.errors import UserError

            raise UserError(f"optimizer.layer_decay={layer_decay}: must be in (0, 1], e.g. 0.75.")
        ids = layer_ids(model, head_names)
    top = max(ids.values(), default=0)
    buckets: dict[tuple[str, int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if name in head_names else "backbone"
        depth = ids.get(name, top) if part == "backbone" else top
        no_decay = p.ndim <= 1  # biases, norm scales/shifts, layer-scale gammas
        buckets.setdefault((part, depth, no_decay), []).append(p)
    groups = []
    for (part, depth, no_decay), params in sorted(buckets.items(), key=lambda kv: (kv[0][0] == "head", kv[0][1], kv[0][2])):
        mult = 1.0
        if part == "backbone":
            mult = float(backbone_lr_mult) * (float(layer_decay) ** (top - depth) if layer_decay else 1.0)
        label = f"{part}.layer{depth}" if layer_decay and part == "backbone" else part
        groups.append({
            "params": params,
            "name": f"{label}_no_decay" if no_decay else label,
            "label": label,
            "part": part,
            "lr": base_lr * mult,
            "lr_mult": mult,
            "weight_decay": 0.0 if no_decay else weight_decay,
        })
    return groups


def runtime_kwargs(target: Any, available: dict[str, Any]) -> dict[str, Any]:
    """The run-time values (total_steps, steps_per_epoch, epochs) that ``target`` accepts by name."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in available.items() if k in params}


class WarmupCosine:
    """lr factor: linear from 0 to 1 over ``warmup`` steps, cosine to ``min_ratio`` at ``total``."""

    def __init__(self, total: int, warmup: int, min_ratio: float) -> None:
        self.total, self.warmup, self.min_ratio = max(1, total), max(0, warmup), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                  warmup_epochs: float = 0.5, min_lr_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to ``min_lr_ratio`` x lr."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup, min_lr_ratio))


def cosine(optimizer: torch.optim.Optimizer, total_steps: int,
           eta_min: float = 0.0) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """Cosine decay over the whole run (per optimizer step)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps), eta_min=eta_min)


def onecycle(optimizer: torch.optim.Optimizer, total_steps: int, pct_start: float = 0.3,
             div_factor: float = 25.0, final_div_factor: float = 1e4) -> torch.optim.lr_scheduler.OneCycleLR:
    """One-cycle policy peaking at each group's own lr; it reaches its final lr on the run's last step.

    (torch counts the step done at construction, so the cycle is one step longer than the run.)
    """
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g.get("initial_lr", g["lr"]) for g in optimizer.param_groups], total_steps=max(2, total_steps + 1),
        pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor)


def is_metric_scheduler(scheduler: Any) -> bool:
    """Schedulers that step on the monitored validation metric (ReduceLROnPlateau)."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

"""Parameter groups and the optimizer over them.

Groups: backbone / head, each split into decay and no-decay (norm layers and biases never get
weight decay). A group's lr is ``base_lr x lr_mult``; schedules scale every group alike.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import torch
from torch import nn

from trainer.errors import UserError
from trainer.models.freeze import layer_ids

log = logging.getLogger(__name__)


def param_groups(
    model: nn.Module,
    head_names: set[str],
    base_lr: float,
    weight_decay: float,
    backbone_lr_mult: float = 1.0,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters in groups by part (backbone/head), weight decay, and lr scale.

    A group's lr is ``base_lr x lr_mult``; for the backbone ``lr_mult = backbone_lr_mult``, times
    ``layer_decay ** (depth of the head - depth of the layer)`` with layer-wise decay. Frozen
    parameters are left out: they get no state, no weight decay, no update.
    """
    ids: dict[str, int] = {}
    if layer_decay is not None:
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
    for (part, depth, no_decay), params in sorted(
        buckets.items(), key=lambda kv: (kv[0][0] == "head", kv[0][1], kv[0][2])
    ):
        mult = 1.0
        if part == "backbone":
            mult = float(backbone_lr_mult) * (float(layer_decay) ** (top - depth) if layer_decay else 1.0)
        label = f"{part}.layer{depth}" if layer_decay and part == "backbone" else part
        groups.append(
            {
                "params": params,
                "name": f"{label}_no_decay" if no_decay else label,
                "label": label,
                "part": part,
                "lr": base_lr * mult,
                "lr_mult": mult,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        )
    return groups


def runtime_kwargs(target: Any, available: dict[str, Any]) -> dict[str, Any]:
    """The run-time values (total_steps, steps_per_epoch, epochs) that ``target`` accepts by name."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in available.items() if k in params}


def build_optimizer(
    factory: functools.partial, groups: list[dict[str, Any]], model: nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    """The configured optimizer (a ``_partial_`` torch optimizer) over ``groups``.

    Unless the config sets ``fused``, torch's fused kernels are used on CUDA where the optimizer
    has them (else torch's default, foreach on CUDA). L-BFGS takes one parameter group (no
    per-group lr or decay). SparseAdam needs sparse gradients, which image backbones never
    produce: refused with the fix.
    """
    target = factory.func
    name = f"{target.__module__}.{target.__qualname__}"
    if target is torch.optim.SparseAdam:
        sparse = [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]
        if not sparse:
            raise UserError(
                "optimizer=sparse_adam updates only parameters with sparse gradients "
                "(nn.Embedding(sparse=True)); this model's gradients are all dense, so it would "
                "train nothing. Use optimizer=adam or optimizer=adamw."
            )
    if target is torch.optim.LBFGS:
        top = max(g["lr"] for g in groups)
        if len({g["lr"] for g in groups}) > 1 or any(g["weight_decay"] for g in groups):
            log.warning(
                "optimizer=lbfgs takes one parameter group: one lr (%g) for all layers, no weight decay "
                "(backbone_lr_mult / layer_decay do not apply)",
                top,
            )
        params = [p for g in groups for p in g["params"]]
        groups = [{"params": params, "lr": top, "name": "all", "label": "head", "weight_decay": 0.0}]
    extra = {}
    if "fused" not in factory.keywords and device.type == "cuda" and runtime_kwargs(target, {"fused": True}):
        extra["fused"] = True
    try:
        return factory(groups, **extra)
    except (TypeError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0]
        raise UserError(f"optimizer {name}: {msg}. Check the optimizer.* keys (train --cfg job shows them).") from None

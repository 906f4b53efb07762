"""Named parts of a backbone, layer depths for lr decay, freezing and the BatchNorm policy."""

from __future__ import annotations

import logging
import re
import types
from typing import Any

from omegaconf import DictConfig, ListConfig
from timm.models import group_parameters
from torch import nn

from trainer.errors import UserError

log = logging.getLogger(__name__)


def model_parts(model: nn.Module, head_names: set[str]) -> dict[str, list[str]]:
    """Named parts of the backbone in forward order -> their parameter names (the head excluded).

    timm models: ``stem`` and ``stages.0``, ``stages.1``, ... from the model's own
    ``group_matcher`` (coarse), so the same names work on ResNet, EfficientNet, ConvNeXt and ViT.
    Any model: its top-level modules by name (``layer1``, ``features``, ...).
    """
    parts: dict[str, list[str]] = {}
    if hasattr(model, "group_matcher"):
        groups = [
            [n for n in names if n not in head_names]
            for names in group_parameters(model, model.group_matcher(coarse=True)).values()
        ]
        groups = [g for g in groups if g]
        if groups:
            parts["stem"] = groups[0]
            for i, g in enumerate(groups[1:]):
                parts[f"stages.{i}"] = g
    return parts


def layer_ids(model: nn.Module, head_names: set[str]) -> dict[str, int]:
    """Depth index of every parameter (for layer-wise lr decay); the head is deepest."""
    names = [n for n, _ in model.named_parameters()]
    if hasattr(model, "group_matcher"):
        ids = {}
        for gid, group in enumerate(group_parameters(model, model.group_matcher(coarse=False)).values()):
            for n in group:
                ids[n] = gid
    else:
        order: dict[str, int] = {}
        ids = {n: order.setdefault(n.split(".", 1)[0], len(order)) for n in names}
    deepest = max((ids[n] for n in names if n not in head_names), default=0) + 1
    return {n: (deepest if n in head_names else ids.get(n, 0)) for n in names}


def _match_part(name: str, parts: dict[str, list[str]], all_names: list[str]) -> list[str]:
    if name in parts:
        return parts[name]
    return [n for n in all_names if n == name or n.startswith(name + ".")]


def _available(parts: dict[str, list[str]], all_names: list[str]) -> str:
    top = list(dict.fromkeys(n.split(".", 1)[0] for n in all_names))
    return ", ".join(list(parts) + [t for t in top if t not in parts])


def resolve_freeze(spec: Any, model: nn.Module, head_names: set[str]) -> set[str]:
    """Parameter names a freeze spec names; the head is never frozen.

    ``none`` | ``backbone`` | a list of parts (``stem``, ``stages.0``, or module names such as
    ``layer1``) | ``{until: part}`` (everything before that part) | ``{regex: pattern}`` or a
    string that names no part (a regex searched in parameter names).
    """

    all_names = [n for n, _ in model.named_parameters()]
    backbone = [n for n in all_names if n not in head_names]
    if spec is None or spec in ("none", "", False):
        return set()
    if spec == "backbone":
        return set(backbone)
    parts = model_parts(model, head_names)
    if isinstance(spec, (list, ListConfig)):
        frozen: set[str] = set()
        for item in spec:
            hit = _match_part(str(item), parts, backbone)
            if not hit:
                raise UserError(
                    f"model.freeze: no part named {str(item)!r} in {type(model).__name__}. "
                    f"Parts: {_available(parts, backbone)}."
                )
            frozen.update(hit)
        return frozen
    if isinstance(spec, (dict, DictConfig)):
        if "until" in spec:
            hit = _match_part(str(spec["until"]), parts, backbone)
            if not hit:
                raise UserError(
                    f"model.freeze.until: no part named {spec['until']!r} in {type(model).__name__}. "
                    f"Parts: {_available(parts, backbone)}."
                )
            first = min(backbone.index(n) for n in hit)
            return set(backbone[:first])
        if "regex" in spec:
            spec = str(spec["regex"])
        else:
            raise UserError(
                f"model.freeze={dict(spec)}: use none, backbone, a list of parts, "
                "{until: <part>} or {regex: <pattern>}."
            )
    spec = str(spec)
    hit = _match_part(spec, parts, backbone)
    if hit:
        return set(hit)
    try:
        pattern = re.compile(spec)
    except re.error as e:
        raise UserError(
            f"model.freeze={spec!r} is neither a part ({_available(parts, backbone)}) nor a valid regex ({e})."
        ) from None
    frozen = {n for n in backbone if pattern.search(n)}
    if not frozen:
        raise UserError(f"model.freeze={spec!r} matches no parameter. Parts: {_available(parts, backbone)}.")
    return frozen


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep a BatchNorm layer in eval mode (running stats fixed) through every ``train()`` call."""
    module.train = types.MethodType(_frozen_train, module)  # type: ignore[method-assign]
    nn.Module.train(module, False)


def unfreeze_batchnorm(module: nn.Module) -> None:
    module.__dict__.pop("train", None)


def apply_freeze(model: nn.Module, head_names: set[str], frozen: set[str], bn_mode: str = "train") -> dict[str, int]:
    """Set requires_grad from ``frozen`` and the BatchNorm policy; returns counts for the log.

    A BatchNorm layer whose parameters are frozen is always fully frozen (eval mode). Otherwise
    ``bn_mode``: ``train`` (normal), ``frozen_stats`` (eval mode: running stats fixed, affine
    trains) or ``frozen`` (eval mode and affine fixed). Frozen modes survive ``model.train()``.
    """
    frozen = set(frozen) - set(head_names)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    head_modules = {n.rsplit(".", 1)[0] for n in head_names}
    bn_frozen = 0
    for mname, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or mname in head_modules:
            continue
        own = [f"{mname}.{n}" for n, _ in m.named_parameters()]
        params_frozen = bool(own) and all(n in frozen for n in own)
        if params_frozen or bn_mode in ("frozen_stats", "frozen"):
            freeze_batchnorm(m)
            bn_frozen += 1
            if bn_mode == "frozen":
                for p in m.parameters():
                    p.requires_grad_(False)
        else:
            unfreeze_batchnorm(m)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "bn_frozen": bn_frozen}

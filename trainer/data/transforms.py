"""Transforms from the model's pretrained config (size, mean, std, interpolation), ``data.*`` overriding.

Training augmentation is seeded per (seed, epoch, sample), so a resumed run sees the same augmented
images as an unbroken one, whatever the number of workers.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from trainer.config.tasks import task_named
from trainer.data.images import BadImage

log = logging.getLogger(__name__)


def resolve_input(
    model_data_config: dict[str, Any], image_size: int | None = None, crop_pct: float | None = None
) -> dict[str, Any]:
    """Size, crop, interpolation, mean and std for this run: the model's, unless data.image_size / crop_pct say."""
    size = image_size or model_data_config["input_size"][-1]
    crop_pct = crop_pct or model_data_config.get("crop_pct") or 1.0
    return {
        "size": int(size),
        "crop_pct": float(crop_pct),
        "interpolation": model_data_config.get("interpolation", "bilinear"),
        "mean": tuple(model_data_config["mean"]),
        "std": tuple(model_data_config["std"]),
    }


POLICIES = {  # data.augment -> torchvision v2 policy, after the random resized crop and flip (on uint8)
    "randaugment": lambda interp: v2.RandAugment(interpolation=interp),
    "trivialaugment": lambda interp: v2.TrivialAugmentWide(interpolation=interp),
    "autoaugment": lambda interp: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interp),
}


SMALLEST_AUTO_SIZE = 64  # small images are upsampled to at least this (pretrained features need some scale)
CPU_AUTO_CAP = 160  # on a CPU auto never goes above this: 0.51x the pixels (and time) of 224


def auto_image_size(native: int | None, model_size: int, device_type: str) -> tuple[int, str]:
    """``data.image_size=auto``: the input size from the images' own size, the model's and the device.

    Images at least as large as the model's pretrained input get that size (photos). Smaller ones get
    twice their size rounded up to a multiple of 32, at least 64 and at most the model's size:
    upsampling tiny images helps a pretrained net (its filters were learned on objects tens of pixels
    across), but past about 2x it adds time, not information. On a CPU the size is capped at 160.
    docs/transfer.md says what of it is measured so far."""
    if native is None:
        size, why = model_size, "the model's pretrained size (the images' size could not be read)"
    elif native >= model_size:
        size, why = model_size, f"images of {native} px (median short side): the model's pretrained size"
    else:
        size = min(model_size, max(SMALLEST_AUTO_SIZE, math.ceil(2 * native / 32) * 32))
        why = f"small images ({native} px median short side): 2x, a multiple of 32, at least {SMALLEST_AUTO_SIZE}"
    if device_type == "cpu" and size > CPU_AUTO_CAP:
        size, why = CPU_AUTO_CAP, why + f"; capped at {CPU_AUTO_CAP} px on a CPU (set data.image_size to choose)"
    return size, why


def build_transforms(
    augment: str,
    spec: dict[str, Any],
    train: bool,
    task: str = "multiclass",
    normalize: bool = True,
    random_erasing: float = 0.0,
) -> Any:
    """torchvision v2 pipeline on uint8 tensors: geometry (and augmentation) -> float -> normalize.

    ``normalize=False`` stops at uint8 (what the loaders use): batches travel as uint8, a quarter of
    the bytes, and :class:`DeviceBatches` converts and normalizes them on the training device.

    Segmentation: the same geometry is applied to the image and its mask (nearest for the mask),
    and evaluation resizes to image_size x image_size without cropping, so every pixel is scored.
    """

    size = spec["size"]
    interp = (
        InterpolationMode(spec["interpolation"])
        if spec["interpolation"] in {m.value for m in InterpolationMode}
        else InterpolationMode.BILINEAR
    )
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec["mean"], spec["std"])] if normalize else []
    if task_named(task).per_pixel:
        if not train or augment == "none":
            geometry = [v2.Resize((size, size), interpolation=interp, antialias=True)]
        elif augment == "affine":
            geometry = [
                v2.Resize((size, size), interpolation=interp, antialias=True),
                v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            ]
        else:
            geometry = [
                v2.RandomResizedCrop(size, scale=(0.4, 1.0), interpolation=interp, antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        return JointTransform(v2.Compose(geometry), v2.Compose(finish) if finish else None)
    resize = int(math.floor(size / spec["crop_pct"]))
    eval_geometry = [v2.Resize(resize, interpolation=interp, antialias=True), v2.CenterCrop(size)]
    if not train or augment == "none":
        return v2.Compose(eval_geometry + finish)
    if augment == "affine":
        return v2.Compose(
            [
                v2.Resize((size, size), interpolation=interp, antialias=True),
                v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            ]
            + ([v2.RandomErasing(p=random_erasing, value=0)] if random_erasing else [])
            + finish
        )
    geometry = [v2.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interp, antialias=True)]
    geometry.append(v2.RandomHorizontalFlip())
    # the policies' rotations and shears take nearest or bilinear on tensors (not the bicubic of many timm models)
    policy_interp = (
        interp if interp in (InterpolationMode.NEAREST, InterpolationMode.BILINEAR) else InterpolationMode.BILINEAR
    )
    policy = [POLICIES[augment](policy_interp)] if augment in POLICIES else []
    erasing = [v2.RandomErasing(p=random_erasing, value=0)] if random_erasing else []  # on uint8: black boxes
    return v2.Compose(geometry + policy + erasing + finish)


class JointTransform:
    """Image + mask: one geometry for both (masks resampled nearest), then the image alone is normalized."""

    def __init__(self, geometry: Any, finish: Any) -> None:
        self.geometry, self.finish = geometry, finish

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:

        if image.shape[-2:] != mask.shape[-2:]:
            turned = tuple(image.shape[-2:]) == tuple(mask.shape[-2:])[::-1]
            hint = (
                " (the image may be turned upright by its EXIF orientation: if the mask was drawn on the stored "
                "pixels, set data.exif=ignore)"
                if turned
                else ""
            )
            raise BadImage(
                f"mask of size {tuple(mask.shape[-2:])} does not match its image {tuple(image.shape[-2:])}{hint}"
            )
        img, m = self.geometry(tv_tensors.Image(image), tv_tensors.Mask(mask))
        img = img.as_subclass(torch.Tensor)
        return (self.finish(img) if self.finish is not None else img), m.as_subclass(torch.Tensor).long()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((int(seed) * 1_000_003 + int(epoch)) * 1_000_003 + int(index)) % (2**63 - 1)

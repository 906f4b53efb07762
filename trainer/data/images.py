"""Images: decoding files (JPEG bytes, masks), image sets, and the bad-image policy."""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from trainer.errors import UserError

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageSet:
    """Labelled images; ``load(i)`` returns a uint8 RGB tensor ``(3, H, W)``, ``target(i)`` its target."""

    targets: list[Any]
    task: str = "multiclass"
    num_classes: int = 0

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def target(self, index: int) -> Any:
        """multiclass: the class index; binary: a float tensor ``[0.]`` or ``[1.]``; multilabel: multi-hot floats."""
        t = self.targets[index]
        if self.task == "binary":
            return torch.tensor([float(t)])
        if self.task == "multilabel":
            hot = torch.zeros(self.num_classes)
            hot[list(t)] = 1.0
            return hot
        return t


class TensorImages(ImageSet):
    """Images held in memory as one uint8 tensor ``(N, C, H, W)`` (C = 1 or 3)."""

    def __init__(self, images: torch.Tensor, targets: Sequence[int]) -> None:
        self.images, self.targets = images, [int(t) for t in targets]

    def load(self, index: int) -> torch.Tensor:
        img = self.images[index]
        return img.expand(3, -1, -1) if img.shape[0] == 1 else img


class BadImage(Exception):
    """An image file that cannot be decoded; the loader skips it and reports it by name."""


def decode_rgb(path: str) -> torch.Tensor:
    """Any Pillow-readable image as a uint8 RGB tensor (3, H, W); BadImage if it cannot be read.

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK and 16-bit images become RGB; 16-bit values
    are scaled to 8 bits. A decompression bomb (more than Pillow's MAX_IMAGE_PIXELS) is refused.
    """

    if path.lower().endswith((".jpg", ".jpeg")):
        fast = _decode_jpeg(path)
        if fast is not None:
            return fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now: a truncated file fails here, not later
                if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                    arr = np.asarray(img, dtype=np.float64)
                    scale = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                    gray = np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
                    return torch.from_numpy(gray).unsqueeze(0).expand(3, -1, -1).contiguous()
                if img.mode == "P" and "transparency" in img.info:
                    img = img.convert("RGBA")
                rgb = img.convert("RGB")
                return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadImage(f"{path}: too large to decode safely ({e})") from None
    except Exception as e:
        raise BadImage(f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'cannot decode'}") from None


def _jpeg_bytes(path: str) -> tuple[torch.Tensor, int, int] | None:
    """A plain JPEG's bytes as a uint8 tensor with its height and width (from the header, no
    decoding); None when it is not a JPEG of a safe size, for Pillow's path to decode it or name
    the problem."""

    try:
        data = Path(path).read_bytes()  # read once: Pillow parses the header, libjpeg-turbo decodes
        with Image.open(io.BytesIO(data)) as img:  # header only: format and size (the bomb check)
            if img.format != "JPEG" or img.width * img.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                return None
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), img.height, img.width
    except Exception:
        return None


def _decode_jpeg(path: str) -> torch.Tensor | None:
    """A JPEG through torchvision.io.decode_jpeg (libjpeg-turbo, straight into a uint8 tensor);
    None when it is not a plain JPEG of a safe size or cannot be decoded so."""
    found = _jpeg_bytes(path)
    if found is None:
        return None
    try:
        return decode_jpegs([found[0]], torch.device("cpu"))[0]
    except Exception:
        return None


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes to uint8 RGB tensors (3, H, W) on ``device`` (CUDA: nvjpeg, the whole list in one call)."""

    with warnings.catch_warnings():  # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        if device.type == "cpu":
            return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


class FileImages(ImageSet):
    """Image files decoded with Pillow into RGB (any mode: gray, palette, RGBA, CMYK, 16-bit)."""

    def __init__(self, paths: Sequence[str], targets: Sequence[Any]) -> None:
        self.paths = [str(p) for p in paths]
        self.targets = [list(t) if isinstance(t, (list, tuple)) else int(t) for t in targets]  # multilabel: lists

    def load(self, index: int) -> torch.Tensor:
        return decode_rgb(self.paths[index])

    def jpeg(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        """The undecoded bytes, height and width of a plain JPEG; None for any other file."""
        path = self.paths[index]
        return _jpeg_bytes(path) if path.lower().endswith((".jpg", ".jpeg")) else None


def native_size(images: ImageSet, samples: int = 64) -> int | None:
    """The median short side, in pixels, of up to ``samples`` images spread over the set (file headers
    only: nothing is decoded); None when none can be read."""
    from PIL import Image

    stored = getattr(images, "images", None)
    if isinstance(stored, torch.Tensor):  # in memory: one size for all
        return int(min(stored.shape[-2:]))
    n = len(images)
    sides = []
    for i in sorted({k * n // samples for k in range(min(samples, n))}):
        path = images.paths[i] if hasattr(images, "paths") else stored[i]  # type: ignore[index]
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return int(sorted(sides)[len(sides) // 2]) if sides else None


def verify_images(images: ImageSet) -> list[str]:
    """Decode every image once; the problems found, one line each."""
    problems = []
    for i in range(len(images)):
        try:
            images.load(i)
        except BadImage as e:
            problems.append(str(e))
    return problems


class SegmentationImages(ImageSet):
    """Images with class-index masks (uint8 PNG, value = class, e.g. 255 = ignore), from files or memory."""

    task = "segmentation"

    def __init__(self, images: Sequence[str] | torch.Tensor, masks: Sequence[str] | torch.Tensor) -> None:
        self.images, self.masks = images, masks
        self.targets = list(range(len(images)))

    def load(self, index: int) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            return self.images[index]
        return decode_rgb(str(self.images[index]))

    def target(self, index: int) -> torch.Tensor:
        if isinstance(self.masks, torch.Tensor):
            return self.masks[index]
        return decode_mask(str(self.masks[index]))


def decode_mask(path: str) -> torch.Tensor:
    """A class-index mask (one channel, value = class) as a uint8 tensor (H, W); BadImage if unreadable."""

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I;16", "I", "1"):
                raise ValueError(f"mode {img.mode}: a mask must hold one class index per pixel (mode L or P)")
            arr = np.asarray(img)
    except Exception as e:
        raise BadImage(f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'cannot decode'}") from None
    if arr.max(initial=0) > 255:
        raise BadImage(f"{path}: mask values above 255")
    return torch.from_numpy(arr.astype(np.uint8))


class BadImageLog:
    """Images that could not be read during training: each named once; too many stop the run."""

    def __init__(self, total: int, max_fraction: float) -> None:
        self.total, self.max_fraction = total, max_fraction
        self.seen: set[str] = set()

    def note(self, problems: Sequence[str]) -> None:
        for problem in problems:
            if problem not in self.seen:
                self.seen.add(problem)
                log.warning("skipping an image that cannot be read: %s", problem)
        if len(self.seen) > self.max_fraction * self.total:
            raise UserError(
                f"{len(self.seen)} of {self.total} images cannot be read, more than "
                f"data.max_bad_fraction={self.max_fraction:g}; e.g. {sorted(self.seen)[0]}. Fix or remove them "
                "(data.verify=true lists every one before training), or raise data.max_bad_fraction."
            )


def verify_splits(train: ImageSet, val: ImageSet, max_fraction: float) -> None:
    """data.verify=true: decode every image first and list every problem."""

    t0 = time.perf_counter()
    problems = verify_images(train) + verify_images(val)
    total = len(train) + len(val)
    for p in problems:
        log.warning("data.verify: %s", p)
    log.info(
        "data.verify: %d images decoded in %.1fs, %d cannot be read", total, time.perf_counter() - t0, len(problems)
    )
    if len(problems) > max_fraction * total:
        raise UserError(
            f"data.verify: {len(problems)} of {total} images cannot be read (listed above), more than "
            f"data.max_bad_fraction={max_fraction:g}. Fix or remove them, or raise data.max_bad_fraction to "
            "train without them."
        )

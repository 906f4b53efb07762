"""Images: decoding files (JPEG bytes, masks), image sets, and the bad-image policy."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg

from trainer.config.tasks import task_named
from trainer.data.files import JPEG_EXTENSIONS, PLUGIN_EXTENSIONS, plugin_extensions
from trainer.errors import UserError

log = logging.getLogger(__name__)


ORIENTATION = 0x0112  # the EXIF tag a phone writes instead of turning the pixels
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """A warning said once per process (a data loader's worker says it once too)."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


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
        t, task = self.targets[index], task_named(self.task)
        if task.one_output:
            return torch.tensor([float(t)])
        if task.sigmoid:  # multilabel
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


def decode_rgb(path: str, exif: bool = True) -> torch.Tensor:
    """Any Pillow-readable image as a uint8 RGB tensor (3, H, W); BadImage if it cannot be read.

    ``exif``: turned as its EXIF orientation says, as a viewer shows it (False: the stored pixels).
    Grayscale, palette, RGBA/LA (alpha dropped), CMYK and 16-bit images become RGB; 16-bit values
    are scaled to 8 bits. A decompression bomb (more than Pillow's MAX_IMAGE_PIXELS) is refused
    from its header, before anything is decoded.
    """

    if path.lower().endswith(tuple(PLUGIN_EXTENSIONS)):
        plugin_extensions()  # registered once per process: a spawned loader worker too
    if path.lower().endswith(JPEG_EXTENSIONS):
        fast = _decode_jpeg(path, exif)
        if fast is not None:
            return fast
    return _decode(path, path, exif)


def decode_bytes(data: bytes, name: str, exif: bool = True) -> torch.Tensor:
    """An encoded image held in memory (a shard's member, a data set's cell) as :func:`decode_rgb` decodes
    a file; ``name`` says which in a message."""
    import io

    if name.lower().endswith(tuple(PLUGIN_EXTENSIONS)):
        plugin_extensions()
    return _decode(io.BytesIO(data), name, exif)


def _decode(source: Any, name: str, exif: bool) -> torch.Tensor:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()  # decode now: a truncated file fails here, not later
                return _to_rgb(_upright(img, name) if exif else img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadImage(f"{name}: too large to decode safely ({e})") from None
    except Exception as e:
        raise BadImage(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'cannot decode'}") from None


class EncodedImages(ImageSet):
    """Encoded images read by index from a container (WebDataset shards, an Arrow data set) and decoded
    with Pillow as files are: ``fetch(i)`` gives the bytes, ``names[i]`` says which image in a message."""

    exif = True
    names: list[str]

    def fetch(self, index: int) -> bytes:
        raise NotImplementedError

    def load(self, index: int) -> torch.Tensor:
        return decode_bytes(self.fetch(index), self.names[index], self.exif)

    def content_key(self, index: int) -> str:
        """Equal keys, equal bytes (the duplicate check)."""
        import hashlib

        return hashlib.blake2b(self.fetch(index), digest_size=16).hexdigest()


def _upright(img: Image.Image, path: str) -> Image.Image:
    """The image as its EXIF orientation says a viewer shows it; malformed EXIF: as stored, said once."""
    if _orientation(img, path) == 1:
        return img  # (exif_transpose would copy even an upright image)
    try:
        with warnings.catch_warnings():  # already said by _orientation
            warnings.simplefilter("ignore")
            return ImageOps.exif_transpose(img)
    except Exception as e:
        _bad_exif(path, type(e).__name__)
        return img


def _bad_exif(path: str, why: str) -> None:
    warn_once(
        "exif",
        f"{path}: its EXIF data is malformed ({why}); what could be read of its orientation is used. Other "
        "such files are read the same way without a further warning.",
    )


def _to_rgb(img: Image.Image) -> torch.Tensor:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _sixteen_bit_gray(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    rgb = img.convert("RGB")
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def _sixteen_bit_gray(img: Image.Image) -> torch.Tensor:
    """A 16-bit (or 32-bit integer) gray image as 8-bit RGB, rounded, in integer arithmetic: no copy
    wider than the stored pixels (a float64 copy would cost four times a 16-bit image)."""
    arr = np.asarray(img)
    if arr.dtype != np.uint16:  # mode I: 32-bit integers, 8-bit values when none exceeds 255
        arr = arr.clip(0, 255 if arr.max(initial=0) <= 255 else 65535).astype(np.uint16)
        if img.mode == "I" and arr.max(initial=0) <= 255:
            gray = arr.astype(np.uint8)
            return torch.from_numpy(gray).unsqueeze(0).expand(3, -1, -1).contiguous()
    q, r = np.divmod(arr, np.uint16(257))  # round(v * 255 / 65535) = round(v / 257)
    gray = (q + (r >= 129)).astype(np.uint8)
    del q, r
    return torch.from_numpy(gray).unsqueeze(0).expand(3, -1, -1).contiguous()


MAX_JPEG_OVERHEAD = 16 * 2**20  # metadata, thumbnails, a motion photo's clip: beyond this, not a photo


def _jpeg_bytes(path: str, exif: bool = True) -> tuple[torch.Tensor, int, int, int] | None:
    """A plain JPEG's bytes as a uint8 tensor, its stored height and width and its EXIF orientation
    (1 when ``exif`` is False), from the header: no decoding, and the body read only once the header
    says it is a JPEG of a safe size. None when it is not, for Pillow's path to decode it or name the problem."""

    try:
        with open(path, "rb") as f:
            with Image.open(f) as img:  # header only: format and size (the bomb check)
                if img.format != "JPEG" or img.width * img.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                    return None
                height, width = img.height, img.width
                orientation = _orientation(img, path) if exif else 1
            size = os.fstat(f.fileno()).st_size
            if size > 8 * width * height + MAX_JPEG_OVERHEAD:  # far more than a JPEG of its size can be
                return None
            f.seek(0)
            data = f.read(size)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), height, width, orientation
    except Exception:
        return None


def _orientation(img: Image.Image, path: str) -> int:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = int(img.getexif().get(ORIENTATION, 1))
    except Exception as e:
        _bad_exif(path, type(e).__name__)
        return 1
    if any("EXIF" in str(w.message) for w in caught):
        _bad_exif(path, str(caught[0].message).strip())
    return value if 1 <= value <= 8 else 1


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A decoded ``(..., H, W)`` image turned as EXIF ``orientation`` (1-8) says (what Pillow's
    ``ImageOps.exif_transpose`` does to the stored pixels)."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-1, -2)  # the four that swap height and width
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation)
    return image.flip(flips).contiguous() if flips else image


def _decode_jpeg(path: str, exif: bool = True) -> torch.Tensor | None:
    """A JPEG through torchvision.io.decode_jpeg (libjpeg-turbo, straight into a uint8 tensor), turned
    upright; None when it is not a plain JPEG of a safe size or cannot be decoded so."""
    found = _jpeg_bytes(path, exif)
    if found is None:
        return None
    try:
        return orient(decode_jpegs([found[0]], torch.device("cpu"))[0], found[3])
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

    exif = True  # turned as the EXIF orientation says (data.exif=apply), as a viewer shows it

    def load(self, index: int) -> torch.Tensor:
        return decode_rgb(self.paths[index], self.exif)

    def jpeg(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        """The undecoded bytes, height and width of a plain upright JPEG (for decoding on the device);
        None for any other file, and for a JPEG that must be turned (it is decoded by the workers)."""
        path = self.paths[index]
        found = _jpeg_bytes(path, self.exif) if path.lower().endswith(JPEG_EXTENSIONS) else None
        return found[:3] if found is not None and found[3] == 1 else None


class _Peeked:
    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs

    def __len__(self) -> int:
        return len(self.blobs)

    def fetch(self, index: int) -> bytes:
        return self.blobs[index]


def native_size(images: ImageSet, samples: int = 64) -> int | None:
    """The median short side, in pixels, of up to ``samples`` images spread over the set (file headers
    only: nothing is decoded); None when none can be read."""
    from PIL import Image

    stored = getattr(images, "images", None)
    if isinstance(stored, torch.Tensor):  # in memory: one size for all
        return int(min(stored.shape[-2:]))
    if hasattr(images, "peek"):  # a stream: its first images
        images = _Peeked(images.peek(samples))
    n = len(images)
    sides = []
    for i in sorted({k * n // samples for k in range(min(samples, n))}):
        path = images.paths[i] if hasattr(images, "paths") else stored[i] if stored is not None else None  # type: ignore[index]
        try:
            if hasattr(images, "fetch"):  # inside a container: its bytes, the header read
                import io

                path = io.BytesIO(images.fetch(i))
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

    exif = True  # images turned as their EXIF orientation says; masks (PNGs, no tag) as stored

    def load(self, index: int) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            return self.images[index]
        return decode_rgb(str(self.images[index]), self.exif)

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

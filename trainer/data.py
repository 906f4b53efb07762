"""Datasets, transforms and loaders.

A dataset option's ``_target_`` returns :class:`Splits`: train and val image sets of uint8
``(3, H, W)`` tensors with their targets, the class names and the task: ``multiclass`` (a class
index), ``binary`` (0 or 1, one output), ``multilabel`` (a set of class indices, multi-hot) or
``segmentation`` (a class-index mask per image, transformed together with its image). Transforms come from the
model's pretrained config (size, mean, std, interpolation); ``data.image_size`` may override
the size. Training augmentation is seeded per (seed, epoch, sample), so a resumed run sees the
same augmented images as an unbroken one, whatever the number of workers.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from trainer.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


TASKS = ("multiclass", "binary", "multilabel", "segmentation")


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
    import warnings

    import numpy as np
    from PIL import Image

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
    import io

    from PIL import Image

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
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

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
    import numpy as np
    from PIL import Image

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


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    classes: list[str]
    task: str = "multiclass"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UserError(f"data.task={self.task!r} is not known: use one of {', '.join(TASKS)}.")
        if self.task == "binary" and len(self.classes) != 2:
            raise UserError(f"data.task=binary needs exactly two classes, found {len(self.classes)} "
                            f"({', '.join(self.classes[:6])}): use data.task=multiclass.")
        for images in (self.train, self.val):
            images.task, images.num_classes = self.task, len(self.classes)


def random_split(n: int, val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a random train/val split with a fixed seed (multilabel, segmentation)."""
    if not 0.0 < float(val_split) < 1.0:
        raise UserError(f"data.val_split={val_split}: must be between 0 and 1 (e.g. 0.2).")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    n_val = max(1, int(round(n * float(val_split))))
    if n - n_val < 1:
        raise UserError(f"cannot split {n} images with data.val_split={val_split}: too few images.")
    return sorted(order[n_val:]), sorted(order[:n_val])


def stratified_split(targets: Sequence[int], val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a stratified train/val split with a fixed seed."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < float(val_split) < 1.0:
        raise UserError(f"data.val_split={val_split}: must be between 0 and 1 (e.g. 0.2).")
    idx = list(range(len(targets)))
    try:
        train_idx, val_idx = train_test_split(idx, test_size=float(val_split), random_state=int(seed),
                                              stratify=list(targets))
    except ValueError as e:
        raise UserError(f"cannot split {len(idx)} images with data.val_split={val_split}: {e}") from None
    return sorted(train_idx), sorted(val_idx)


def load_digits(val_split: float = 0.2, seed: int = 0) -> Splits:
    """scikit-learn's 8x8 digits (1,797 real images, 10 classes), stratified split."""
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    targets = digits.target.tolist()
    train_idx, val_idx = stratified_split(targets, val_split, seed)
    return Splits(TensorImages(images[train_idx], [targets[i] for i in train_idx]),
                  TensorImages(images[val_idx], [targets[i] for i in val_idx]),
                  [str(i) for i in range(10)])


def _scan_class_folders(root: Path) -> tuple[list[str], list[str], list[int]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, targets = [], []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(f))
                targets.append(ci)
    return classes, paths, targets


def load_imagefolder(root: str, val_split: float = 0.2, seed: int = 0, task: str = "multiclass") -> Splits:
    """``root/train/<class>/*`` and ``root/val/<class>/*``, or ``root/<class>/*`` split by val_split."""
    base = Path(str(root)).expanduser()
    if not base.is_dir():
        raise UserError(f"data.root={str(root)!r}: no such folder. It must hold train/ and val/ class "
                        "folders, or one set of class folders (e.g. data.root=~/data/pets).")
    if (base / "train").is_dir() and (base / "val").is_dir():
        classes, tr_paths, tr_targets = _scan_class_folders(base / "train")
        val_classes, va_paths, va_targets = _scan_class_folders(base / "val")
        if classes != val_classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise UserError(f"data.root={str(base)!r}: train/ and val/ have different class folders "
                            f"(only in train: {only_train or '-'}; only in val: {only_val or '-'}). "
                            "Make both hold the same class folders so labels mean the same thing.")
        if not tr_paths or not va_paths:
            empty = "train/" if not tr_paths else "val/"
            raise UserError(f"data.root={str(base)!r}: {empty} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        return Splits(FileImages(tr_paths, tr_targets), FileImages(va_paths, va_targets), classes, task)
    classes, paths, targets = _scan_class_folders(base)
    if not classes or not paths:
        raise UserError(f"data.root={str(base)!r} holds no class folders with images. Expected "
                        "DIR/<class>/<image> (or DIR/train/<class>/... and DIR/val/<class>/...).")
    if len(classes) < 2:
        raise UserError(f"data.root={str(base)!r}: found one class folder ({classes[0]}); a classifier needs two or more.")
    train_idx, val_idx = stratified_split(targets, val_split, seed)
    return Splits(FileImages([paths[i] for i in train_idx], [targets[i] for i in train_idx]),
                  FileImages([paths[i] for i in val_idx], [targets[i] for i in val_idx]), classes, task)


def make_fake(num_classes: int = 4, train_size: int = 256, val_size: int = 64, image_size: int = 32,
              seed: int = 0, task: str = "multiclass") -> Splits:
    """Generated images a small net can learn: each class has its own colour and stripe direction."""
    g = torch.Generator().manual_seed(int(seed) + 12345)
    colours = torch.rand(num_classes, 3, 1, 1, generator=g)
    yy, xx = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")

    def make(n: int) -> tuple[torch.Tensor, list[int]]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        angle = labels.float() * math.pi / num_classes
        phase = torch.rand(n, generator=g) * 6.28
        wave = torch.sin((xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]) * 0.8
                         + phase[:, None, None])
        img = 0.5 * colours[labels] + 0.3 * wave[:, None] + 0.2 * torch.rand(n, 3, image_size, image_size, generator=g)
        return (img.clamp(0, 1) * 255).to(torch.uint8), labels.tolist()

    tr_x, tr_y = make(train_size)
    va_x, va_y = make(val_size)
    return Splits(TensorImages(tr_x, tr_y), TensorImages(va_x, va_y), [f"class{i}" for i in range(num_classes)], task)


def read_label_csv(path: Path, root: Path) -> tuple[list[str], list[list[str]]]:
    """Rows ``path,labels`` (header optional; labels separated by spaces, may be empty)."""
    import csv

    paths, labels = [], []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or (n == 1 and row[0].strip().lower() in ("path", "image", "file", "filename")):
                continue
            if len(row) < 2:
                raise UserError(f"{path}, line {n}: expected `path,labels` (labels separated by spaces), got {row}.")
            p = Path(row[0].strip())
            paths.append(str(p if p.is_absolute() else root / p))
            labels.append(row[1].split())
    if not paths:
        raise UserError(f"{path} lists no images: write one `path,labels` row per image.")
    return paths, labels


def load_multilabel_csv(csv: str, root: str | None = None, val_csv: str | None = None, val_split: float = 0.2,
                        seed: int = 0) -> Splits:
    """Multilabel images listed in a CSV (``path,labels``, labels space-separated); paths relative to
    ``root`` (default: the CSV's folder). Validation: ``val_csv``, or a random ``val_split``."""
    csv_path = Path(str(csv)).expanduser()
    if not csv_path.is_file():
        raise UserError(f"data.csv={str(csv)!r}: no such file. Give a CSV with rows `path,labels`, e.g. "
                        "`img/001.jpg,cat dog`.")
    base = Path(str(root)).expanduser() if root else csv_path.parent
    paths, labels = read_label_csv(csv_path, base)
    if val_csv:
        vpath = Path(str(val_csv)).expanduser()
        if not vpath.is_file():
            raise UserError(f"data.val_csv={str(val_csv)!r}: no such file.")
        vpaths, vlabels = read_label_csv(vpath, base)
    else:
        tr, va = random_split(len(paths), val_split, seed)
        paths, labels, vpaths, vlabels = ([paths[i] for i in tr], [labels[i] for i in tr],
                                          [paths[i] for i in va], [labels[i] for i in va])
    classes = sorted({lab for row in labels + vlabels for lab in row})
    if len(classes) < 2:
        raise UserError(f"{csv_path}: found {len(classes)} label name(s); a multilabel task needs two or more.")
    index = {c: i for i, c in enumerate(classes)}
    return Splits(FileImages(paths, [[index[lab] for lab in row] for row in labels]),
                  FileImages(vpaths, [[index[lab] for lab in row] for row in vlabels]), classes, "multilabel")


def _pairs(images_dir: Path, masks_dir: Path) -> tuple[list[str], list[str]]:
    masks = {f.stem: f for f in masks_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS}
    images = sorted(f for f in images_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    missing = [f.name for f in images if f.stem not in masks]
    if missing:
        raise UserError(f"{images_dir}: {len(missing)} image(s) have no mask of the same name in {masks_dir} "
                        f"(e.g. {', '.join(missing[:3])}). Each image needs masks/<same stem>.png.")
    return [str(f) for f in images], [str(masks[f.stem]) for f in images]


def load_segfolder(root: str, classes: Sequence[str] | None = None, val_split: float = 0.2, seed: int = 0) -> Splits:
    """``root/images/*`` with ``root/masks/<same stem>.png`` (class-index PNGs), split by val_split; or
    ``root/train/{images,masks}`` and ``root/val/{images,masks}``. ``classes``: names by index (null:
    ``class0..`` up to the largest index found in the masks, 255 aside)."""
    base = Path(str(root)).expanduser()
    if (base / "train" / "images").is_dir() and (base / "val" / "images").is_dir():
        tr_i, tr_m = _pairs(base / "train" / "images", base / "train" / "masks")
        va_i, va_m = _pairs(base / "val" / "images", base / "val" / "masks")
    elif (base / "images").is_dir() and (base / "masks").is_dir():
        all_i, all_m = _pairs(base / "images", base / "masks")
        tr, va = random_split(len(all_i), val_split, seed)
        tr_i, tr_m, va_i, va_m = [all_i[i] for i in tr], [all_m[i] for i in tr], [all_i[i] for i in va], [all_m[i] for i in va]
    else:
        raise UserError(f"data.root={str(root)!r} must hold images/ and masks/ folders (masks: class-index PNGs "
                        "with the images' names), or train/ and val/ folders that each hold them.")
    if not tr_i or not va_i:
        raise UserError(f"data.root={str(base)!r}: the train or val split holds no images.")
    if classes is None:
        top = 0
        for m in tr_m + va_m:
            try:
                values = decode_mask(m).unique()
            except BadImage:
                continue  # reported by name when it is loaded
            values = values[values != 255]
            top = max(top, int(values.max()) if len(values) else 0)
        names = [f"class{i}" for i in range(top + 1)]
        log.info("segmentation classes from the masks: %d (indices 0-%d; set data.classes to name them)", top + 1, top)
    else:
        names = [str(c) for c in classes]
    if len(names) < 2:
        raise UserError(f"data.root={str(base)!r}: masks hold one class only; segmentation needs two or more "
                        "(e.g. background and object).")
    return Splits(SegmentationImages(tr_i, tr_m), SegmentationImages(va_i, va_m), names, "segmentation")


def make_shapes(train_size: int = 256, val_size: int = 64, image_size: int = 64, seed: int = 0) -> Splits:
    """Generated segmentation data: squares and discs (each class its own colour, jittered) on noise."""
    g = torch.Generator().manual_seed(int(seed) + 777)
    yy, xx = torch.meshgrid(torch.arange(image_size).float(), torch.arange(image_size).float(), indexing="ij")
    colours = torch.tensor([[0.85, 0.25, 0.2], [0.2, 0.45, 0.9]])

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = 0.35 + 0.3 * torch.rand(n, 3, image_size, image_size, generator=g)
        masks = torch.zeros(n, image_size, image_size, dtype=torch.uint8)
        for i in range(n):
            for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
                cls = int(torch.randint(1, 3, (1,), generator=g))
                r = float(torch.empty(1).uniform_(image_size * 0.08, image_size * 0.2, generator=g))
                cy, cx = (float(v) for v in torch.empty(2).uniform_(r, image_size - r, generator=g))
                if cls == 1:
                    inside = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
                else:
                    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                colour = (colours[cls - 1] + 0.1 * torch.randn(3, generator=g)).clamp(0, 1)
                imgs[i][:, inside] = colour[:, None] * (0.9 + 0.2 * torch.rand(int(inside.sum()), generator=g))
                masks[i][inside] = cls
        return (imgs.clamp(0, 1) * 255).to(torch.uint8), masks

    tr_x, tr_m = make(train_size)
    va_x, va_m = make(val_size)
    return Splits(SegmentationImages(tr_x, tr_m), SegmentationImages(va_x, va_m), ["background", "square", "disc"],
                  "segmentation")


# ---------------------------------------------------------------- transforms

def resolve_input(data_cfg: Any, model_data_config: dict[str, Any]) -> dict[str, Any]:
    """Size, crop, interpolation, mean and std for this run: the model's, with data.* overrides."""
    size = data_cfg.get("image_size") or model_data_config["input_size"][-1]
    crop_pct = data_cfg.get("crop_pct") or model_data_config.get("crop_pct") or 1.0
    return {"size": int(size), "crop_pct": float(crop_pct),
            "interpolation": model_data_config.get("interpolation", "bilinear"),
            "mean": tuple(model_data_config["mean"]), "std": tuple(model_data_config["std"])}


def build_transforms(augment: str, spec: dict[str, Any], train: bool, task: str = "multiclass",
                     normalize: bool = True) -> Any:
    """torchvision v2 pipeline on uint8 tensors: geometry (and augmentation) -> float -> normalize.

    ``normalize=False`` stops at uint8 (what the loaders use): batches travel as uint8, a quarter of
    the bytes, and :class:`DeviceBatches` converts and normalizes them on the training device.

    Segmentation: the same geometry is applied to the image and its mask (nearest for the mask),
    and evaluation resizes to image_size x image_size without cropping, so every pixel is scored.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    size = spec["size"]
    interp = InterpolationMode(spec["interpolation"]) if spec["interpolation"] in {m.value for m in InterpolationMode} \
        else InterpolationMode.BILINEAR
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec["mean"], spec["std"])] if normalize else []
    if augment not in ("none", "affine", "flip_crop"):
        raise UserError(f"data.augment={augment!r} is not known: use none, affine or flip_crop.")
    if task == "segmentation":
        if not train or augment == "none":
            geometry = [v2.Resize((size, size), interpolation=interp, antialias=True)]
        elif augment == "affine":
            geometry = [v2.Resize((size, size), interpolation=interp, antialias=True),
                        v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))]
        else:
            geometry = [v2.RandomResizedCrop(size, scale=(0.4, 1.0), interpolation=interp, antialias=True),
                        v2.RandomHorizontalFlip()]
        return JointTransform(v2.Compose(geometry), v2.Compose(finish) if finish else None)
    resize = int(math.floor(size / spec["crop_pct"]))
    eval_geometry = [v2.Resize(resize, interpolation=interp, antialias=True), v2.CenterCrop(size)]
    if not train or augment == "none":
        return v2.Compose(eval_geometry + finish)
    if augment == "affine":
        return v2.Compose([v2.Resize((size, size), interpolation=interp, antialias=True),
                           v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))] + finish)
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interp, antialias=True),
                       v2.RandomHorizontalFlip()] + finish)


class JointTransform:
    """Image + mask: one geometry for both (masks resampled nearest), then the image alone is normalized."""

    def __init__(self, geometry: Any, finish: Any) -> None:
        self.geometry, self.finish = geometry, finish

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        if image.shape[-2:] != mask.shape[-2:]:
            raise BadImage(f"mask of size {tuple(mask.shape[-2:])} does not match its image {tuple(image.shape[-2:])}")
        img, m = self.geometry(tv_tensors.Image(image), tv_tensors.Mask(mask))
        img = img.as_subclass(torch.Tensor)
        return (self.finish(img) if self.finish is not None else img), m.as_subclass(torch.Tensor).long()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((int(seed) * 1_000_003 + int(epoch)) * 1_000_003 + int(index)) % (2**63 - 1)


class RawJpeg(NamedTuple):
    """A JPEG to decode on the training device: its bytes, the geometry drawn for it, and that
    geometry as one resampling per axis (``plan_resample``; made in the worker, off the training
    process) for the header's ``size``."""
    data: torch.Tensor
    ops: list[Any]
    path: str
    size: tuple[int, int]
    plan: Any


class RawBatch(NamedTuple):
    """``data.decode=device``: a batch of undecoded JPEGs (and finished uint8 images for other files)."""
    items: list[Any]
    targets: Any
    bad: list[str]


class DeviceGeometry:
    """The geometry of a v2 pipeline (RandomResizedCrop + RandomHorizontalFlip, or Resize +
    CenterCrop) cut in two for ``data.decode=device``: the loader's worker draws the random
    parameters from the image size in the JPEG header (the same draws, in the same order, as the
    pipeline makes), and the pixels are resampled on the training device after decoding there."""

    def __init__(self, pipeline: Any) -> None:
        from torchvision.transforms import v2

        self.steps = list(pipeline.transforms)
        kinds = [type(t) for t in self.steps]
        if kinds not in ([v2.RandomResizedCrop, v2.RandomHorizontalFlip], [v2.Resize, v2.CenterCrop]):
            raise UserError(f"data.decode=device supports data.augment=flip_crop or none; this pipeline is "
                            f"{[k.__name__ for k in kinds]}. Use data.decode=workers.")

    def plan(self, height: int, width: int) -> list[Any]:
        from torchvision.transforms import v2

        size = [torch.empty((3, height, width), dtype=torch.uint8)]  # no pixels: make_params reads the size
        ops: list[Any] = []
        for t in self.steps:
            if isinstance(t, v2.RandomResizedCrop):
                p = t.make_params(size)
                ops.append(("resized_crop", p["top"], p["left"], p["height"], p["width"], list(t.size),
                            t.interpolation))
            elif isinstance(t, v2.RandomHorizontalFlip):
                if not bool(torch.rand(1) >= t.p):  # the draw v2 makes before flipping
                    ops.append(("hflip",))
            elif isinstance(t, v2.Resize):
                ops.append(("resize", t.size, t.interpolation, t.max_size))
            else:
                ops.append(("center_crop", list(t.size)))
        return ops


def apply_geometry(img: torch.Tensor, ops: list[Any]) -> torch.Tensor:
    """What :meth:`DeviceGeometry.plan` drew, applied with the kernels the v2 pipeline uses."""
    from torchvision.transforms.v2 import functional as F

    for op in ops:
        if op[0] == "resized_crop":
            img = F.resized_crop(img, op[1], op[2], op[3], op[4], size=list(op[5]), interpolation=op[6],
                                 antialias=True)
        elif op[0] == "hflip":
            img = F.horizontal_flip(img)
        elif op[0] == "resize":
            img = F.resize(img, size=op[1], interpolation=op[2], max_size=op[3], antialias=True)
        else:
            img = F.center_crop(img, list(op[1]))
    return img


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic with a = -0.5, the filter torch's antialiased bicubic resize uses."""
    x = x.abs()
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


_RESAMPLE_FILTERS = {"bilinear": lambda x: (1.0 - x.abs()).clamp_min(0.0), "bicubic": _cubic}


class _AxisPlan(NamedTuple):
    """One axis of one image: ``length`` source pixels (from ``start``) resized to ``size``, of which
    ``count`` are kept from ``offset`` (negative: zero padding), reversed when ``flip``."""
    start: int
    length: int
    size: int
    offset: int
    count: int
    flip: bool = False


def _small_tensor(values: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A little host data on ``device`` without a host sync (pinned, copied non_blocking)."""
    cuda = device.type == "cuda"
    return torch.tensor(values, dtype=dtype, pin_memory=cuda).to(device, non_blocking=cuda)


def _center_anchor(size: int, crop: int) -> int:
    return int(round((size - crop) / 2.0)) if crop <= size else -((crop - size) // 2)  # v2.CenterCrop's


def plan_resample(ops: list[Any], height: int, width: int) -> tuple[str, _AxisPlan, _AxisPlan] | None:
    """What :func:`apply_geometry` would do to an image of this size, as one separable resampling
    per axis (for :func:`resample_batch`); None when it is not one (e.g. nearest interpolation)."""
    from torchvision.transforms.v2 import functional as F

    mode, y, x = None, _AxisPlan(0, height, height, 0, height), _AxisPlan(0, width, width, 0, width)
    for op in ops:
        if op[0] in ("resized_crop", "resize") and mode is not None:
            return None  # two resamplings in a row are not one
        if op[0] == "resized_crop":
            size = list(op[5]) * (2 if len(op[5]) == 1 else 1)
            mode = op[6].value
            y, x = _AxisPlan(op[1], op[3], size[0], 0, size[0]), _AxisPlan(op[2], op[4], size[1], 0, size[1])
        elif op[0] == "hflip":
            x = x._replace(flip=not x.flip)
        elif op[0] == "resize":
            mode = op[2].value
            # v2's own size rule, on an empty image (no pixels are touched)
            h, w = F.resize(torch.empty((0, y.count, x.count)), op[1], max_size=op[3]).shape[-2:]
            y, x = y._replace(size=h, offset=0, count=h), x._replace(size=w, offset=0, count=w)
        elif op[0] == "center_crop":
            ch, cw = (list(op[1]) * 2)[:2] if len(op[1]) == 1 else op[1]
            y = y._replace(offset=y.offset + _center_anchor(y.count, ch), count=ch)
            x = x._replace(offset=x.offset + _center_anchor(x.count, cw), count=cw)
        else:
            return None
    if mode not in _RESAMPLE_FILTERS or x.flip and x.offset != 0:  # a flip before a center crop: not modelled
        return None
    return mode, y, x


def _resample_weights(plans: list[_AxisPlan], span: int, mode: str, device: torch.device) -> torch.Tensor:
    """(N, count, span) matrices: row o holds the weights torch's antialiased resize gives the
    source pixels for output pixel o (source pixel j at column j - start)."""
    kernel = _RESAMPLE_FILTERS[mode]  # zero outside its support, so no window is needed
    p = _small_tensor([[a.length, a.size, a.offset, int(a.flip)] for a in plans], torch.float32, device)
    length, size, offset, flip = (p[:, k, None] for k in range(4))
    count = plans[0].count
    o = torch.arange(count, dtype=torch.float32, device=device)[None]
    r = offset + torch.where(flip > 0, count - 1 - o, o)  # the resized pixel each output pixel is
    scale = length / size
    invscale = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))  # wider filter when shrinking
    center = scale * (r + 0.5)
    j = torch.arange(span, dtype=torch.float32, device=device)[None, None]
    w = kernel((j - center[..., None] + 0.5) * invscale[..., None])
    w = w * (j < length[..., None]) * ((r >= 0) & (r < size))[..., None]  # inside the source; padding rows 0
    total = w.sum(-1, keepdim=True)
    return w / torch.where(total == 0, torch.ones_like(total), total)


def resample_batch(images: list[torch.Tensor], plans: list[tuple[str, _AxisPlan, _AxisPlan]],
                   budget: int = 1 << 24) -> torch.Tensor:
    """uint8 images (3, H, W) of any sizes, each cropped, resized (antialiased), flipped and center
    cropped as its plan says, in a few batched matrix products instead of a chain of kernels per
    image. The same arithmetic as torch's antialiased bilinear/bicubic resize, in float32; rounded
    and clamped to uint8 as v2 does. Images are cropped, then padded to a common size in groups of
    similar size (at most ``budget`` padded pixels each), so odd sizes do not blow up memory."""
    device = images[0].device
    out = torch.empty((len(images), images[0].shape[0], plans[0][1].count, plans[0][2].count), dtype=torch.uint8,
                      device=device)
    # the source region each image needs (the crop, or the whole image)
    crops = [img[:, y.start:y.start + y.length, x.start:x.start + x.length] for img, (_, y, x) in zip(images, plans)]
    order = sorted(range(len(images)), key=lambda k: (plans[k][0], crops[k].shape[1], crops[k].shape[2]))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32: weights in TF32 would move pixels by a level
    try:
        while order:
            group = [order.pop(0)]
            rows, cols = crops[group[0]].shape[1:]
            area = rows * cols  # the group's real pixels
            while order and plans[order[0]][0] == plans[group[0]][0]:
                h, w = crops[order[0]].shape[1:]
                padded = (len(group) + 1) * max(rows, h) * max(cols, w)
                if padded > budget or padded > 2 * (area + h * w):
                    break
                group.append(order.pop(0))
                rows, cols, area = max(rows, h), max(cols, w), area + h * w
            # (n, rows, channels, cols): each pass is then one plain batched product, no broadcast copies
            channels = crops[group[0]].shape[0]
            if all(crops[k].shape[1:] == (rows, cols) for k in group):
                src = torch.stack([crops[k] for k in group]).transpose(1, 2).contiguous()
            else:
                src = torch.zeros((len(group), rows, channels, cols), dtype=torch.uint8, device=device)
                for i, k in enumerate(group):
                    src[i, :crops[k].shape[1], :, :crops[k].shape[2]] = crops[k].transpose(0, 1)
            mode = plans[group[0]][0]
            wy = _resample_weights([plans[k][1] for k in group], rows, mode, device)  # (n, out rows, rows)
            wx = _resample_weights([plans[k][2] for k in group], cols, mode, device)  # (n, out cols, cols)
            n, out_rows, out_cols = len(group), wy.shape[1], wx.shape[1]
            res = torch.bmm(wy, src.float().view(n, rows, channels * cols))  # rows resampled
            res = torch.bmm(res.view(n, out_rows * channels, cols), wx.transpose(1, 2))  # then columns
            res = res.view(n, out_rows, channels, out_cols).round_().clamp_(0, 255).to(torch.uint8).transpose(1, 2)
            out.index_copy_(0, _small_tensor(group, torch.long, device), res)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def collate_raw(items: list[Any]) -> RawBatch:
    """``data.decode=device``: undecoded JPEGs and their targets; unreadable files named."""
    from torch.utils.data import default_collate

    good = [it for it in items if not isinstance(it, BadImage)]
    targets = default_collate([t for _, t in good]) if good else torch.empty(0, dtype=torch.long)
    return RawBatch([x for x, _ in good], targets, [str(it) for it in items if isinstance(it, BadImage)])


class TransformedImages(Dataset):
    """Applies a transform to an :class:`ImageSet`. Keys ``(epoch, index)`` seed the augmentation."""

    def __init__(self, images: ImageSet, transform: Any, seed: int = 0, decode_on_device: bool = False) -> None:
        self.images, self.transform, self.seed = images, transform, seed
        self.geometry = DeviceGeometry(transform) if decode_on_device else None

    def __len__(self) -> int:
        return len(self.images)

    def _apply(self, index: int) -> tuple[Any, Any]:
        if self.geometry is not None and hasattr(self.images, "jpeg"):
            found = self.images.jpeg(index)
            if found is not None:  # decoded and resampled on the training device
                data, height, width = found
                ops = self.geometry.plan(height, width)
                return RawJpeg(data, ops, self.images.paths[index], (height, width),
                               plan_resample(ops, height, width)), self.images.target(index)
        img, target = self.images.load(index), self.images.target(index)
        if isinstance(self.transform, JointTransform):
            try:
                return self.transform(img, target)
            except BadImage as e:
                raise BadImage(f"{getattr(self.images, 'masks', [''] * (index + 1))[index]}: {e}") from None
        return self.transform(img), target

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, Any] | BadImage:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        try:
            if epoch is None:
                return self._apply(index)
            # Per-sample seed: the same augmentation for this sample in this epoch, in any worker,
            # before or after a resume. fork_rng keeps the caller's RNG (dropout etc.) untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                return self._apply(index)
        except BadImage as e:
            return e  # skipped by collate_skipping_bad, reported by the run


def collate_skipping_bad(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images, targets, problems): images that could not be decoded are left out and named."""
    from torch.utils.data import default_collate

    good = [it for it in items if not isinstance(it, BadImage)]
    if good:
        x, y = default_collate(good)
    else:
        x, y = torch.empty(0), torch.empty(0, dtype=torch.long)
    return x, y, [str(it) for it in items if isinstance(it, BadImage)]


class EpochSampler(Sampler):
    """Shuffles with a generator seeded by (seed, epoch) and can start part-way into an epoch.

    Yields ``(epoch, index)`` so the dataset can seed each sample's augmentation. With
    ``world_size`` processes each takes every world_size-th index of the epoch's order (padded by
    wrapping around, so every rank gets as many batches), like torch's DistributedSampler.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.rank, self.world_size = int(rank), max(1, int(world_size))
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def shard(self, epoch: int) -> list[int]:
        order = self.order(epoch)
        if self.world_size == 1:
            return order
        per_rank = math.ceil(self.size / self.world_size)
        padded = (order * (1 + per_rank * self.world_size // max(1, self.size)))[:per_rank * self.world_size]
        return padded[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.shard(epoch)[self.start:]:
            yield epoch, index

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size) - self.start

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start": self.start}


def default_num_workers(on_gpu: bool = False) -> int:
    """Loader workers for ``data.num_workers=auto``: the cores this process may use, less one for
    itself. Training on a GPU, decoding is the bottleneck and every core helps (shared between the
    processes of one node under torchrun); on a CPU the model needs the cores, so at most 8 workers."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if on_gpu:
        per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(0, min(32, per_process - 1))
    return max(0, min(8, cores - 1))


def pieces_per_batch(batch_size: int, workers: int) -> int:
    """How many pieces a batch is loaded in: up to one per worker, at least 16 images each, a
    divisor of the batch so every piece is the same size. A worker builds one piece at a time, so
    the first batch of an epoch is ready after one piece's images instead of a whole batch's."""
    limit = max(1, min(workers, batch_size // 16))
    return max(d for d in range(1, limit + 1) if batch_size % d == 0)


class MicroBatches(list):
    """The pieces of one batch, in order; :class:`DeviceBatches` joins them on the device."""


class MicroBatchSampler(Sampler):
    """Each batch of ``batch_size`` keys from ``sampler`` cut into pieces of ``piece`` keys (the
    loader's batch_sampler). Batches are formed exactly as ``DataLoader(batch_size, drop_last)`` forms
    them, so joining the pieces gives the same batches."""

    def __init__(self, sampler: Sampler, batch_size: int, piece: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.piece, self.drop_last = sampler, batch_size, piece, drop_last

    def batch_sizes(self) -> list[int]:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return [self.batch_size] * full + ([rest] if rest and not self.drop_last else [])

    def __iter__(self) -> Iterator[list[Any]]:
        keys = iter(self.sampler)
        for size in self.batch_sizes():
            batch = list(itertools.islice(keys, size))
            for k in range(0, size, self.piece):
                yield batch[k:k + self.piece]

    def __len__(self) -> int:
        return sum(math.ceil(size / self.piece) for size in self.batch_sizes())


class MicroBatchLoader:
    """A DataLoader whose workers build each batch together, piece by piece (see
    :func:`pieces_per_batch`); yields each batch as :class:`MicroBatches`. Same batches, same order,
    same augmentation (seeded per sample) as one worker per batch."""

    def __init__(self, dataset: Dataset, sampler: Sampler, batch_size: int, pieces: int, drop_last: bool,
                 **loader_args: Any) -> None:
        self.batch_sampler = MicroBatchSampler(sampler, batch_size, batch_size // pieces, drop_last)
        self.loader = DataLoader(dataset, batch_sampler=self.batch_sampler, **loader_args)
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last
        self.num_workers, self.pieces = self.loader.num_workers, pieces

    def __len__(self) -> int:
        return len(self.batch_sampler.batch_sizes())

    def __iter__(self) -> Iterator[MicroBatches]:
        sizes = self.batch_sampler.batch_sizes()  # read before the loader starts drawing keys
        pieces = iter(self.loader)
        for size in sizes:
            yield MicroBatches(next(pieces) for _ in range(math.ceil(size / self.batch_sampler.piece)))


class CachedFeatures(Dataset):
    """Backbone features computed once (linear probe), served with the same (epoch, index) keys."""

    def __init__(self, features: torch.Tensor, images: ImageSet) -> None:
        self.features, self.images = features, images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, Any]:
        index = key[1] if isinstance(key, tuple) else key
        return self.features[index], self.images.target(index)


class DeviceBatches:
    """Batches of a loader on the training device: uint8 images copied (non_blocking from pinned
    memory) and turned into normalized floats there. On CUDA the next batch is copied and
    normalized on a side stream while the current one trains; elsewhere it is done in line.

    Yields ``(x, y, bad)`` like the loader; ``x`` float32 ``(N, 3, H, W)`` in ``memory_format``.
    Anything that is not a uint8 image batch (cached features) is only moved.
    """

    def __init__(self, loader: Any, device: torch.device, mean: Sequence[float], std: Sequence[float],
                 memory_format: torch.memory_format = torch.preserve_format) -> None:
        self.loader, self.device, self.memory_format = loader, device, memory_format
        # x / 255 - mean) / std  ==  x * scale + shift, one fused op
        std_t = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1).to(device)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        # data.decode=device: a GPU resamples a batch fastest as a few dense matrix products
        # (resample_batch); a CPU, image by image with v2's uint8 kernels (as the workers would)
        self.batched_resample = device.type == "cuda"

    def __len__(self) -> int:
        return len(self.loader)

    def _move(self, batch: Any) -> Any:
        if isinstance(batch, MicroBatches) and batch and isinstance(batch[0], RawBatch):
            batch = RawBatch([it for b in batch for it in b.items], torch.cat([b.targets for b in batch]),
                             [name for b in batch for name in b.bad])
        if isinstance(batch, RawBatch):
            x, y, rest = self._decode(batch)
        elif isinstance(batch, MicroBatches):
            x, y, rest = self._join([self._to_device(piece) for piece in batch])
        else:
            x, y, rest = self._to_device(batch)
        if x.dtype == torch.uint8 and x.ndim == 4:
            x = torch.addcmul(self.shift, x.float(), self.scale).contiguous(memory_format=self.memory_format)
        return (x, y, *rest)

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, Any, tuple[Any, ...]]:
        return (batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True),
                tuple(batch[2:]))

    def _decode(self, batch: RawBatch) -> tuple[torch.Tensor, Any, tuple[Any, ...]]:
        """Decode a batch's JPEGs on the device in one call, resample each as its worker drew, stack."""
        raws = [k for k, it in enumerate(batch.items) if isinstance(it, RawJpeg)]
        try:
            decoded: list[torch.Tensor | None] = list(decode_jpegs([batch.items[k].data for k in raws], self.device))
        except Exception:  # one bad file fails the whole call: decode one by one to name it
            decoded = []
            for k in raws:
                try:
                    decoded.append(decode_jpegs([batch.items[k].data], self.device)[0])
                except Exception:
                    decoded.append(None)
        images = dict(zip(raws, decoded))
        bad, keep, out = list(batch.bad), [], []
        together: dict[int, Any] = {}  # resampled in one batched call: position in out -> plan
        for k, item in enumerate(batch.items):
            if isinstance(item, RawJpeg):
                if images[k] is None:
                    bad.append(f"{item.path}: cannot be decoded as a JPEG")
                    continue
                if self.batched_resample and item.plan is not None and tuple(images[k].shape[1:]) == item.size:
                    together[len(out)] = item.plan
                    out.append(images[k])
                else:
                    out.append(apply_geometry(images[k], item.ops))
            else:
                out.append(item.to(self.device, non_blocking=True))
            keep.append(k)
        done = resample_batch([out[i] for i in together], list(together.values())) if together else None
        if done is not None and len(together) < len(out):
            for i, img in zip(together, done):
                out[i] = img
        y = batch.targets.to(self.device, non_blocking=True)
        if len(keep) < len(batch.items):
            y = y[_small_tensor(keep, torch.long, self.device)]
        if done is not None and len(together) == len(out):
            x = done  # every image resampled together: already the batch
        else:
            x = torch.stack(out) if out else torch.empty(0, device=self.device)
        return x, y, (bad,)

    @staticmethod
    def _join(pieces: list[tuple[torch.Tensor, Any, tuple[Any, ...]]]) -> tuple[torch.Tensor, Any, tuple[Any, ...]]:
        """One batch from its pieces; pieces left empty by undecodable images are left out, their
        names kept."""
        bad = [name for piece in pieces if piece[2] for name in piece[2][0]]
        full = [piece for piece in pieces if piece[0].shape[0] > 0] or pieces[:1]
        if len(full) == 1:
            return full[0][0], full[0][1], (bad,)
        return torch.cat([piece[0] for piece in full]), torch.cat([piece[1] for piece in full]), (bad,)

    def __iter__(self) -> Iterator[Any]:
        if self.stream is None:
            for batch in self.loader:
                yield self._move(batch)
            return
        current = torch.cuda.current_stream(self.device)
        ahead = None
        for batch in self.loader:
            with torch.cuda.stream(self.stream):
                moved = self._move(batch)
            if ahead is not None:
                yield self._ready(ahead, current)
            ahead = moved
        if ahead is not None:
            yield self._ready(ahead, current)

    def _ready(self, batch: Any, current: Any) -> Any:
        current.wait_stream(self.stream)
        for t in batch[:2]:
            t.record_stream(current)  # memory made on the side stream, used on this one
        return batch


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    sampler: EpochSampler
    input_spec: dict[str, Any]
    batch_size: int
    train_eval: DataLoader  # the training images with eval transforms, in order (feature caching)


class ShardSampler(Sampler):
    """Every world_size-th index from ``rank`` (evaluation: each sample once over all ranks)."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loaders(data_cfg: Any, splits: Splits, model_data_config: dict[str, Any], seed: int,
                  on_gpu: bool, rank: int = 0, world_size: int = 1) -> Loaders:
    """Train loader (seeded shuffling and augmentation, drop_last) and val loader; sharded by rank."""
    spec = resolve_input(data_cfg, model_data_config)
    batch_size = int(data_cfg.batch_size)
    if batch_size < 1:
        raise UserError(f"data.batch_size={batch_size}: must be 1 or more.")
    workers = data_cfg.get("num_workers", "auto")
    workers = default_num_workers(on_gpu) if workers in (None, "auto") else int(workers)
    task = splits.task
    augment = str(data_cfg.augment)
    on_device = data_cfg.get("decode", "workers") == "device"  # the value is checked by validate_config
    if on_device and (task == "segmentation" or not isinstance(splits.train, FileImages)):
        raise UserError("data.decode=device decodes JPEG files of a classification dataset (data=imagefolder or "
                        "data=multilabel_csv); this data is not. Use data.decode=workers.")
    train_set = TransformedImages(splits.train, build_transforms(augment, spec, True, task, normalize=False), seed,
                                  decode_on_device=on_device)
    val_set = TransformedImages(splits.val, build_transforms(augment, spec, False, task, normalize=False), seed,
                                decode_on_device=on_device)
    if len(train_set) == 0 or len(val_set) == 0:
        raise UserError("the train or val split is empty: add images or change data.val_split.")
    sampler = EpochSampler(len(train_set), seed, shuffle=True, rank=rank, world_size=world_size)
    common = dict(num_workers=workers, pin_memory=on_gpu, persistent_workers=workers > 0,
                  collate_fn=collate_raw if on_device else collate_skipping_bad,
                  # own generators: building an iterator must not draw from the global RNG
                  generator=torch.Generator().manual_seed(int(seed)))
    if workers > 0:
        common["prefetch_factor"] = 4
    val_sampler = ShardSampler(len(val_set), rank, world_size) if world_size > 1 else SequentialSampler(val_set)
    pieces = pieces_per_batch(batch_size, workers)
    if pieces > 1:  # the workers build each batch together: a short wait at the start of an epoch
        train = MicroBatchLoader(train_set, sampler, batch_size, pieces, len(sampler) > batch_size, **common)
        val = MicroBatchLoader(val_set, val_sampler, batch_size * 2, pieces_per_batch(batch_size * 2, workers),
                               False, **common)
    else:
        train = DataLoader(train_set, batch_size=batch_size, sampler=sampler,
                           drop_last=len(sampler) > batch_size, **common)
        val = DataLoader(val_set, batch_size=batch_size * 2, sampler=val_sampler, **common)
    train_eval = DataLoader(TransformedImages(splits.train, val_set.transform, seed), batch_size=batch_size * 2,
                            shuffle=False, num_workers=workers, pin_memory=on_gpu, collate_fn=collate_skipping_bad)
    log.info("data: %s, %d train / %d val images, %d classes, input %dpx (%s, crop_pct %.3f), augment=%s, "
             "batch %d, %d workers%s", task, len(train_set), len(val_set), len(splits.classes), spec["size"],
             spec["interpolation"], spec["crop_pct"], data_cfg.augment, batch_size, workers,
             f" (each batch built by {pieces} together)" if pieces > 1 else "")
    if on_device:
        log.info("data.decode=device: JPEGs are decoded and resampled on %s; the workers read files and draw "
                 "the augmentation", "the GPU" if on_gpu else "the main process")
    return Loaders(train, val, sampler, spec, batch_size, train_eval)

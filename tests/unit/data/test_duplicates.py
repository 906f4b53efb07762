"""Exact duplicates within and across splits, on a folder with planted copies, held to hashlib by hand."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import duplicates as dup
from trainer.data.datasets import Splits, load_imagefolder
from trainer.data.images import TensorImages
from trainer.errors import UserError


def _noise(path, seed, size=24):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _planted(root):
    """train/ and val/ of cats and dogs with: a val image copied from train (renamed, as a download
    tool would), a copy within train, one file under both labels, and a re-encoded copy (other bytes)."""
    for i in range(6):
        _noise(root / "train" / "cat" / f"c{i}.png", i)
        _noise(root / "train" / "dog" / f"d{i}.png", 100 + i, size=26)
        _noise(root / "val" / "cat" / f"vc{i}.png", 200 + i)
        _noise(root / "val" / "dog" / f"vd{i}.png", 300 + i, size=26)
    (root / "val" / "cat" / "c0 (1).png").write_bytes((root / "train" / "cat" / "c0.png").read_bytes())
    (root / "train" / "dog" / "d1 copy.png").write_bytes((root / "train" / "dog" / "d1.png").read_bytes())
    (root / "train" / "dog" / "c2.png").write_bytes((root / "train" / "cat" / "c2.png").read_bytes())
    Image.open(root / "train" / "cat" / "c3.png").save(root / "val" / "cat" / "c3.jpg", quality=100)


def test_the_digest_is_blake2b_of_the_bytes_and_only_files_that_share_a_size_are_read(tmp_path, monkeypatch):
    _planted(tmp_path)
    path = tmp_path / "train" / "cat" / "c0.png"
    assert dup.file_digest(str(path)) == hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    (tmp_path / "train" / "cat" / "big.png").write_bytes(b"\x89PNG" + b"x" * 5000)  # a size nobody shares
    read = []
    original = dup.file_digest
    monkeypatch.setattr(dup, "file_digest", lambda p: read.append(p) or original(p))
    splits = load_imagefolder(str(tmp_path))
    dup.content_keys(splits)
    assert read and not any(p.endswith("big.png") for p in read)


def test_planted_copies_are_found_and_the_val_copy_left_out_of_val(tmp_path, caplog):
    _planted(tmp_path)
    splits = load_imagefolder(str(tmp_path))
    found = dup.find_duplicates(splits)
    val_names = [splits.val.paths[i] for i in found.val_copies_of_train()]
    assert [n.split("/")[-1] for n in val_names] == ["c0 (1).png"]  # the re-encoded c3.jpg is not an exact copy
    assert found.extra_within("train") == 2 and found.extra_within("val") == 0  # d1 copy.png, dog/c2.png
    with caplog.at_level(logging.WARNING, logger="trainer"):
        kept = dup.check_duplicates(splits, "drop_from_val", "data=imagefolder")
    said = caplog.text
    assert "1 of 14 val images are byte-for-byte copies of train images" in said
    assert "val/cat/c0 (1).png = train/cat/c0.png" in said
    assert "2 extra copies within train" in said
    assert "1 images under two different labels" in said and "train/cat/c2.png and train/dog/c2.png" in said
    assert len(kept.val) == 13 and not any(p.endswith("c0 (1).png") for p in kept.val.paths)
    assert kept.val.targets == [t for p, t in zip(splits.val.paths, splits.val.targets) if not p.endswith("(1).png")]
    assert len(kept.train) == len(splits.train)  # nothing removed from training


def test_warn_keeps_the_copies_and_error_stops_naming_them(tmp_path, caplog):
    _planted(tmp_path)
    splits = load_imagefolder(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert dup.check_duplicates(splits, "warn", "data=imagefolder") is splits
    assert "Kept (data.duplicates=warn)" in caplog.text
    with pytest.raises(UserError, match=r"c0 \(1\)\.png = train/cat/c0\.png.*data\.duplicates=error"):
        dup.check_duplicates(splits, "error", "data=imagefolder")
    with pytest.raises(UserError, match="data.duplicates='maybe' is not valid"):
        dup.check_duplicates(splits, "maybe", "data=imagefolder")


def test_images_held_in_memory_are_compared_by_their_pixels():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=g)
    val = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, generator=g)
    val[2] = train[5]
    splits = Splits(TensorImages(train, [0, 1] * 4), TensorImages(val, [0, 1] * 2), ["a", "b"])
    found = dup.find_duplicates(splits)
    assert found.val_copies_of_train() == [2] and found.name(("val", 2)) == "val #2"
    kept = dup.check_duplicates(splits, "drop_from_val", "data=digits")
    assert len(kept.val) == 3 and torch.equal(kept.val.load(2), splits.val.load(3))


def test_a_folder_without_copies_says_nothing(tmp_path, caplog):
    for i in range(4):
        _noise(tmp_path / "a" / f"{i}.png", i)
        _noise(tmp_path / "b" / f"{i}.png", 10 + i)
    splits = load_imagefolder(str(tmp_path), val_split=0.5)
    with caplog.at_level(logging.INFO, logger="trainer"):
        assert dup.check_duplicates(splits, "drop_from_val", "data=imagefolder") is splits
    assert "duplicates" not in caplog.text

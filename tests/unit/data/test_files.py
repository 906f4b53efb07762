"""Which files of a folder are images: a folder made the way people's folders look (a zip made on a Mac,
Windows' and a NAS's leftovers, notebooks' checkpoints, phone and browser extensions, stray files)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from trainer.data.datasets import load_imagefolder, scan_class_folders
from trainer.data.files import LeftOut, class_folders, list_images
from trainer.errors import UserError

APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 60  # a ._name file's header


def _image(path, value=128, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path, format=fmt)


def mac_zip_folder(root):
    """Two real classes of 5 images each, unzipped from a Mac archive, with every leftover people have."""
    for c in ("cat", "dog"):
        for i in range(3):
            _image(root / c / f"{i}.png")
            (root / "__MACOSX" / c / f"._{i}.png").parent.mkdir(parents=True, exist_ok=True)
            (root / "__MACOSX" / c / f"._{i}.png").write_bytes(APPLEDOUBLE)
            (root / c / f"._{i}.png").write_bytes(APPLEDOUBLE)
        _image(root / c / "phone.jfif", fmt="JPEG")
        _image(root / c / "browser.JPE", fmt="JPEG")
        (root / c / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (root / c / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        (root / c / "desktop.ini").write_text("[.ShellClassInfo]\n")
        _image(root / c / ".ipynb_checkpoints" / "0-checkpoint.png")
        _image(root / c / "@eaDir" / "0.png" / "SYNOFILE_THUMB_M.jpg", fmt="JPEG")
    (root / "cat" / "notes.txt").write_text("where these came from\n")
    (root / "dog" / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "README.md").write_text("my pets\n")


def test_leftovers_are_never_classes_nor_images_and_are_counted(tmp_path):
    mac_zip_folder(tmp_path)
    left = LeftOut()
    classes, paths, targets = scan_class_folders(tmp_path, left)
    assert classes == ["cat", "dog"]
    assert len(paths) == 10 and targets.count(0) == 5  # 3 png, .jfif and .JPE each
    assert sorted({p.rsplit(".", 1)[1] for p in paths}) == ["JPE", "jfif", "png"]
    # __MACOSX's 6 files, 6 ._ files, 2 x (.DS_Store, Thumbs.db, desktop.ini, a checkpoint, a NAS thumbnail), root .DS_Store
    text = left.describe()
    assert left.reasons[next(r for r in left.reasons if r.startswith("hidden"))] == 6 + 6 + 2 * 5 + 1
    assert "2 not image files (1 .txt, 1 .mp4" in text
    assert "1 files outside the class folders" in text and "README.md" in text
    assert len(left) == 26


def test_a_plugin_format_without_its_plugin_is_named(tmp_path, monkeypatch):
    import trainer.data.files as files

    monkeypatch.setattr(files, "readable_extensions", lambda: files.IMAGE_EXTENSIONS)
    (tmp_path / "a.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    left = LeftOut()
    assert list_images(tmp_path, left) == []
    assert "1 .heic files need pillow-heif (pip install 'transfer-trainer[heif]')" in left.describe()


def test_the_imagefolder_says_once_what_it_left_out(tmp_path, caplog):
    mac_zip_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        splits = load_imagefolder(str(tmp_path), val_split=0.4)
    assert splits.classes == ["cat", "dog"] and len(splits.train) + len(splits.val) == 10
    said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(said) == 1 and "26 files left out" in said[0] and "__MACOSX" in said[0]


def test_an_empty_class_folder_is_named_and_gets_no_output(tmp_path, caplog):
    for c in ("cat", "dog"):
        for i in range(4):
            _image(tmp_path / c / f"{i}.png")
    (tmp_path / "bird").mkdir()
    with caplog.at_level(logging.WARNING):
        splits = load_imagefolder(str(tmp_path), val_split=0.5)
    assert splits.classes == ["cat", "dog"]
    assert any("'bird'" in r.getMessage() and "no images" in r.getMessage() for r in caplog.records)
    # train/ and val/: empty in both splits -> left out; images only in val -> refused by name
    two = tmp_path / "two"
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            _image(two / split / c / "0.png")
        (two / split / "bird").mkdir(parents=True)
    assert load_imagefolder(str(two)).classes == ["cat", "dog"]
    _image(two / "val" / "bird" / "0.png")
    with pytest.raises(UserError, match=r"'bird' have images in val/ but none in train/"):
        load_imagefolder(str(two))


def test_a_class_too_small_to_split_is_named_by_its_folder(tmp_path):
    for c, n in (("cat", 12), ("dog", 12), ("rare_bird", 1)):
        for i in range(n):
            _image(tmp_path / c / f"{i}.png")
    with pytest.raises(UserError, match=r"'rare_bird' hold one image"):
        load_imagefolder(str(tmp_path))
    _image(tmp_path / "rare_bird" / "1.png")
    with pytest.raises(UserError, match=r"data.val_split=0.05 of 26 images gives 2 val images for 3 classes"):
        load_imagefolder(str(tmp_path), val_split=0.05)


def test_split_folders_named_as_downloads_name_them_are_splits_not_classes(tmp_path):
    for split in ("train", "valid", "test"):  # Roboflow's and many Kaggle sets' layout
        for c in ("cat", "dog"):
            for i in range(2):
                _image(tmp_path / "set" / split / c / f"{i}.png")
    splits = load_imagefolder(str(tmp_path / "set"))
    assert splits.classes == ["cat", "dog"] and len(splits.train) == 4 and len(splits.val) == 4
    (tmp_path / "set" / "valid").rename(tmp_path / "set" / "holdout")
    with pytest.raises(UserError, match=r"holdout, test, train look like splits|test, train look like splits"):
        load_imagefolder(str(tmp_path / "set"))


def test_class_folders_that_differ_only_in_case_are_named(tmp_path, caplog):
    for c in ("Golden Retriever", "golden_retriever", "cat"):
        _image(tmp_path / c / "0.png")
    with caplog.at_level(logging.WARNING):
        names = class_folders(tmp_path, LeftOut())
    assert names == ["Golden Retriever", "cat", "golden_retriever"]
    said = [r.getMessage() for r in caplog.records if "differ only in case" in r.getMessage()]
    assert len(said) == 1 and "'Golden Retriever', 'golden_retriever'" in said[0]

"""Folders as people have them, through the real commands: phone photos stored sideways with an EXIF
orientation, a zip made on a Mac, notebook checkpoints, .jfif files, an empty class folder, unreadable
val images, and file names a spreadsheet would run as formulas."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from runner import in_process, train
from support import TINY

from trainer.data.images import orient
from trainer.runs.csvcells import FORMULA_STARTS, read_cell

INVERSE = {1: 1, 3: 3, 6: 8, 8: 6}  # stored pixels that the orientation turns into the upright image


def upright(cls: str, rng) -> np.ndarray:
    """A 32 px image whose class shows only upright: the bright half on top, or at the bottom."""
    arr = rng.normal(60, 25, (32, 32, 3))
    arr[: 16 if cls == "top" else 32, :, :] += 0 if cls == "bottom" else 140
    if cls == "bottom":
        arr[16:] += 140
    return np.clip(arr, 0, 255).astype(np.uint8)


def save_as_a_phone_does(path, arr: np.ndarray, orientation: int) -> None:
    """The pixels as a phone stores them (turned away from upright) with the tag a viewer turns them back by."""
    stored = orient(torch.from_numpy(arr).permute(2, 0, 1), INVERSE[orientation]).permute(1, 2, 0).numpy()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(stored)).save(path, format="JPEG", quality=95, exif=exif.tobytes())


def phone_folder(root, n: int, seed: int, bad: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for cls in ("bottom", "top"):
        for i in range(n):
            ext = "jfif" if i % 5 == 0 else "jpg"  # what phones and browsers name JPEGs
            save_as_a_phone_does(root / cls / f"IMG_{i:04d}.{ext}", upright(cls, rng), (3, 3, 6, 8)[i % 4])
            (root / "__MACOSX" / cls / f"._IMG_{i:04d}.{ext}").parent.mkdir(parents=True, exist_ok=True)
            (root / "__MACOSX" / cls / f"._IMG_{i:04d}.{ext}").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 80)
        (root / cls / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        for i in range(bad):
            (root / cls / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (root / "empty_class").mkdir()


@pytest.fixture(scope="module")
def phone_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phone")
    phone_folder(tmp / "data" / "train", 24, seed=0)
    phone_folder(tmp / "data" / "val", 8, seed=1, bad=1)
    run = tmp / "run"
    model = [a for a in TINY if a.startswith("model.")]
    args = ["data=imagefolder", f"data.root={tmp / 'data'}", "data.image_size=32", "data.augment=none"]
    args += [
        "trainer.epochs=6",
        "data.batch_size=8",
        "finetune.head_epochs=0",
        "data.max_bad_fraction=0.05",
        f"hydra.run.dir={run}",
    ]
    proc = train([*model, *args], tmp)
    return tmp, run, proc.stdout + proc.stderr


def test_phone_photos_are_learnt_upright_and_leftovers_are_never_data(phone_run):
    tmp, run, log = phone_run
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True, map_location="cpu")
    assert list(state["classes"]) == ["bottom", "top"]  # no __MACOSX class, no output for the empty folder
    assert "48 train / 18 val images" in log  # every .jfif counted; the two broken val files stay named
    assert "files left out" in log and "__MACOSX" in log and "'empty_class'" in log
    # the same scenes stored upright with no tag: the classes are what a viewer shows
    rng = np.random.default_rng(7)
    for cls in ("bottom", "top"):
        for i in range(10):
            (tmp / "upright" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(upright(cls, rng)).save(tmp / "upright" / cls / f"{i}.png")
    proc = in_process("evaluate", [f"checkpoint={run}", f"data.root={tmp / 'upright'}", f"out={tmp / 'e'}"], tmp)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp / "e" / "metrics.json").read_text())["val/acc"] >= 0.9
    # predict on a photo stored upside down with its tag: the label of the image the user sees
    new = tmp / "new"
    save_as_a_phone_does(new / "IMG_9000.jpg", upright("top", rng), 3)
    save_as_a_phone_does(new / "IMG_9001.jpg", upright("bottom", rng), 6)
    Image.fromarray(upright("top", rng)).save(new / ".ipynb_checkpoints" / "x-checkpoint.png") if (
        new / ".ipynb_checkpoints"
    ).mkdir() is None else None
    (new / "__MACOSX").mkdir()
    (new / "__MACOSX" / "._IMG_9000.jpg").write_bytes(b"\x00\x05\x16\x07")
    out = tmp / "p.csv"
    proc = in_process("predict", [f"checkpoint={run}", f"source={new}", f"out={out}"], tmp)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(out, newline="")))
    assert [(r["path"].rsplit("/", 1)[1], r["label_1"]) for r in rows] == [
        ("IMG_9000.jpg", "top"),
        ("IMG_9001.jpg", "bottom"),
    ]
    assert "2 files left out" in proc.stderr


def test_evaluate_names_unreadable_val_images_and_reports_every_readable_one(phone_run):
    tmp, run, _ = phone_run
    proc = in_process("evaluate", [f"checkpoint={run}", f"out={tmp / 'val'}"], tmp)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp / "val" / "metrics.json").read_text())
    assert report["images"] == 16
    assert sorted(p.split(": ")[0].rsplit("/", 1)[1] for p in report["unreadable"]) == ["broken0.jpg", "broken0.jpg"]
    assert "could not be read, left out of the scores" in proc.stdout
    errors = list(csv.DictReader(open(tmp / "val" / "errors.csv", newline="")))  # written, not left out
    assert all("broken" not in r["path"] for r in errors)
    assert "(epoch" in proc.stdout and "16 images" in proc.stdout


def test_file_names_that_look_like_formulas_are_neutralised_and_read_back(phone_run):
    tmp, run, _ = phone_run
    names = ["=HYPERLINK(1).png", "+1.png", "-2+3.png", "@SUM(A1).png", "\tTab.png", "'quoted.png", 'a,b"c\nd.png']
    folder = tmp / "odd"
    folder.mkdir()
    for name in names:
        Image.fromarray(upright("top", np.random.default_rng(0))).save(folder / name, format="PNG")
    out = tmp / "odd.csv"
    proc = in_process("predict", [f"checkpoint={run}", f"source={folder}", f"out={out}"], tmp)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(open(out, newline="")))
    cells = [c for row in rows for c in row]
    assert not [c for c in cells if c.startswith(FORMULA_STARTS[:-1])], cells  # nothing a spreadsheet runs
    assert sorted(read_cell(r[0]).rsplit("/", 1)[1] for r in rows[1:]) == sorted(names)


def test_a_class_with_one_image_is_named_by_its_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("bottom", 10), ("top", 10), ("owl", 1)):
        for i in range(n):
            (tmp_path / "d" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(upright("top", rng)).save(tmp_path / "d" / cls / f"{i}.png")
    proc = train([*TINY[:3], "data=imagefolder", f"data.root={tmp_path / 'd'}"], tmp_path, check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "'owl' hold one image" in said and "Traceback" not in said

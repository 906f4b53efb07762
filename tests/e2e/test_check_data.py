"""`check-data` on a folder made the way people's folders are: copies and near-copies across the splits,
a Mac zip's leftovers, an unreadable file, a phone photo with an EXIF turn, and labels that are wrong."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from runner import in_process, train
from support import TINY

COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200)}


def _photo(path, rgb, seed, size=32):
    """A colour with a pattern of its own (gradients and blobs: perceptual hashes see structure)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    pattern = np.sin(xx * rng.uniform(2, 9) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(2, 9))
    pixels = np.array(rgb)[None, None, :] * (0.6 + 0.4 * pattern[..., None]) + rng.normal(0, 8, (size, size, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


def _messy(root, per_class=12):
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(per_class):
            _photo(root / "train" / name / f"{i}.png", rgb, 1000 * c + i)
            _photo(root / "val" / name / f"v{i}.png", rgb, 5000 + 1000 * c + i)
    red = root / "train" / "red"
    (root / "val" / "red" / "0 (1).png").write_bytes((red / "0.png").read_bytes())  # an exact copy
    Image.open(red / "1.png").resize((26, 26)).save(root / "val" / "red" / "1_small.png")
    Image.open(red / "2.png").save(root / "val" / "red" / "2.jpg", quality=70)
    Image.open(red / "3.png").crop((1, 1, 31, 31)).save(root / "val" / "red" / "3_crop.png")
    ImageEnhance.Brightness(Image.open(red / "4.png")).enhance(1.1).save(root / "val" / "red" / "4_bright.png")
    Image.open(red / "5.png").save(root / "val" / "red" / "5.bmp")  # the same pixels in another format
    (red / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (red / "._5.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "train" / "blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    turned = Image.open(root / "train" / "blue" / "0.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone's "turn 90 degrees to view"
    turned.save(root / "train" / "blue" / "phone.jpg", exif=exif.tobytes())


def test_the_report_names_copies_near_copies_leftovers_unreadable_and_turned_files(tmp_path):
    import imagehash

    _messy(tmp_path / "data")
    out = tmp_path / "report"
    args = ["data=imagefolder", f"data.root={tmp_path / 'data'}", f"out={out}", "similar=0.99"]
    proc = in_process("check_data", args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "data_report.json").read_text())
    assert report["exact_duplicates"]["val_copies_of_train"] == 1
    near = {v.split("/")[-1]: (t.split("/")[-1], d) for v, t, d in report["near_duplicates"]["pairs"]}
    for name, source in (
        ("1_small.png", "1.png"),
        ("2.jpg", "2.png"),
        ("3_crop.png", "3.png"),
        ("4_bright.png", "4.png"),
    ):
        assert near[name][0] == source, (name, near)
        # the distance is imagehash's own (its ImageHash difference is the Hamming distance)
        val, tr = (
            Image.open(tmp_path / "data" / s / "red" / n).convert("RGB") for s, n in (("val", name), ("train", source))
        )
        assert near[name][1] == imagehash.phash(val) - imagehash.phash(tr)
    assert not any(v.startswith("v") for v in near)  # different pictures of the same colour are not near
    similar = {v.split("/")[-1]: (t.split("/")[-1], c) for v, t, c in report["similar_features"]["pairs"]}
    assert similar["5.bmp"][0] == "5.png" and similar["5.bmp"][1] >= 0.999  # the pretrained features agree
    train = report["splits"]["train"]
    assert len(train["unreadable"]) == 1 and "broken.png" in train["unreadable"][0]
    assert train["exif_rotated"] == 1 and train["exif_rotated_examples"][0].endswith("phone.jpg")
    assert report["class_counts"]["val"] == {"red": 18, "blue": 12}
    assert any("2 hidden or system files" in line for line in report["said_while_reading"])
    assert (out / "data_report.png").stat().st_size > 10_000
    assert "1 val images are copies of train images" in proc.stdout and "near-duplicates: 5 val images" in proc.stdout


@pytest.mark.slow
def test_label_issues_are_cleanlabs_on_the_runs_held_out_probabilities(tmp_path):
    import cleanlab.filter

    from trainer.models.trained import load_trained
    from trainer.use.evaluate import on_val_split

    data = tmp_path / "data"
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(30):
            _photo(data / "train" / name / f"{i}.png", rgb, 100 * c + i)
            _photo(data / "val" / name / f"v{i}.png", rgb, 7000 + 100 * c + i)
    wrong = ["v0.png", "v1.png", "v2.png"]
    for name in wrong:  # red images filed under blue: labels a person got wrong
        (data / "val" / "red" / name).rename(data / "val" / "blue" / f"red_{name}")
    run = tmp_path / "run"
    model = [a for a in TINY if a.startswith("model.")]
    args = ["data=imagefolder", f"data.root={data}", "data.image_size=32", "trainer.epochs=6", "finetune.head_epochs=0"]
    args.append("optimizer.lr=3e-2")
    train([*model, *args, f"hydra.run.dir={run}"], tmp_path)
    out = tmp_path / "report"
    proc = in_process("check_data", ["data=imagefolder", f"data.root={data}", f"labels={run}", f"out={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(out / "label_issues.csv")))
    flagged = {r["path"].split("/")[-1] for r in rows}
    assert {f"red_{n}" for n in wrong} <= flagged, rows
    assert all(
        r["given"] == "blue" and r["suggested"] == "red" for r in rows if r["path"].split("/")[-1].startswith("red_")
    )
    # the same list, in the same order, as cleanlab called directly on the run's val probabilities
    probs, targets, names, _ = on_val_split(load_trained(str(run)), "cpu")["scored"]
    ranked = cleanlab.filter.find_label_issues(
        labels=targets.numpy(),
        pred_probs=probs.double().numpy(),
        filter_by="low_self_confidence",
        return_indices_ranked_by="self_confidence",
    )
    assert [r["path"] for r in rows] == [names[i] for i in ranked]
    assert (out / "label_issues.png").stat().st_size > 5_000
    assert f"suspected label errors: {len(rows)}" in proc.stdout


@pytest.mark.parametrize(
    "args,expected",
    [
        ([], "check-data needs the data to check: data=imagefolder data.root=DIR"),
        (["data=imagefolder", "data.root={one}"], "found one class folder with images"),
        (["data=imagefolder", "data.root={one}/..", "near=99"], "near=99: give a number of bits, 0 to 64"),
        (["data=imagefolder", "data.root={two}", "similar=high"], "similar='high': give a cosine similarity"),
        (["data=imagefolder", "data.root={two}", "labels={two}"], "no run there"),
        (["data=imagefolder", "data.root={two}", "filter_by=vibes"], "filter_by='vibes' is not valid"),
    ],
)
def test_bad_input_is_answered_in_one_paragraph(tmp_path, args, expected):
    for i in range(3):
        _photo(tmp_path / "one" / "red" / f"{i}.png", COLOURS["red"], i)
        _photo(tmp_path / "two" / "red" / f"{i}.png", COLOURS["red"], i)
        _photo(tmp_path / "two" / "blue" / f"{i}.png", COLOURS["blue"], 10 + i)
    args = [a.format(one=tmp_path / "one", two=tmp_path / "two") for a in args]
    proc = in_process("check_data", [*args, f"out={tmp_path / 'r'}"], tmp_path)
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_folder_given_from_the_home_folder_is_found_as_the_shell_would(tmp_path, monkeypatch):
    from trainer.use.check_data import build

    for c, name in enumerate(("cat", "dog")):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(5):
            a = np.full((16, 16, 3), 30 * i, np.uint8)
            a[..., c] = 200
            Image.fromarray(a).save(tmp_path / "pets" / name / f"{i}.png")
    monkeypatch.setenv("HOME", str(tmp_path))
    splits, _ = build(["data=imagefolder", "data.root=~/pets"])  # `~` after `=`: no shell expands it
    assert splits.classes == ["cat", "dog"] and len(splits.train) + len(splits.val) == 10

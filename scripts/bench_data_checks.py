"""How well the data checks find what was planted: copies across the splits and wrong labels.

    python scripts/bench_data_checks.py copies [--data digits,mnist5k,patches] [--k 50]
    python scripts/bench_data_checks.py labels [--data digits,mnist5k,patches] [--flip 0.05] [--epochs 2]
    python scripts/bench_data_checks.py cost   [--files 20000]

Each built-in set is written out as a folder of PNGs (train/<class>/, val/<class>/; the in-memory images
at their own size, so an 8 px digit stays 8 px), as a user's folder would hold it.

`copies`: k train images copied into val as they are, and k each resized to 0.8x, re-saved as JPEG
quality 70, cropped by 5% and brightened by 10%. The exact check (file bytes, every run) and the
perceptual hash (check-data: pHash, 64 bits) at each distance: how many of each kind are found
(recall), and how many of the original val images are named although nothing was copied (false
positives).

`labels`: the labels of a share of the training images changed to another class at random. A 5-fold
cross-validation sweep on the noisy folder (`train -m data.folds=5 'data.fold=range(5)'`, the
option's own recipe, `--epochs` each) gives every training image a prediction by a model that did
not train on it; `check-data labels=SWEEP` flags suspected errors (cleanlab). Precision and recall of
the flagged images against the changed ones, then the val accuracy of a run on the clean folder, on
the noisy one and on the noisy one without the flagged images, at equal epochs.

`cost`: a folder of --files small JPEGs (a tenth of them byte-for-byte copies): the exact check's time
at the start of a run against one epoch's time of the default model on it.

Nothing is asserted: the numbers are for docs/data.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

RECIPE = {  # what the built-in data options set, for the same images as a folder
    "digits": ["data.image_size=64", "data.augment=affine", "data.crop_pct=1.0", "data.batch_size=64"],
    "mnist5k": ["data.image_size=64", "data.augment=affine", "data.batch_size=64"],
    "patches": ["data.batch_size=64"],
}


def write_folder(data: str, root: Path) -> tuple[list[str], Path]:
    """The built-in set ``data`` as PNG files; its classes."""
    from PIL import Image

    from trainer.data import datasets

    loader = {"digits": datasets.load_digits, "mnist5k": datasets.load_mnist5k, "patches": datasets.load_photo_patches}
    splits = loader[data]()
    for split in ("train", "val"):
        images = getattr(splits, split)
        for i in range(len(images)):
            folder = root / split / splits.classes[images.targets[i]]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = images.load(i).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / f"{split}{i:05d}.png")
    return splits.classes, root


def plant_copies(root: Path, k: int, seed: int = 0) -> dict[str, list[str]]:
    """k train images into val as each kind of copy; the planted val file names per kind."""
    from PIL import Image, ImageEnhance

    rng = random.Random(seed)
    train = sorted((root / "train").glob("*/*.png"))
    chosen = rng.sample(train, 5 * k)
    kinds = {"exact": [], "resized 0.8x": [], "JPEG q70": [], "crop 5%": [], "brightness +10%": []}
    for n, src in enumerate(chosen):
        kind = list(kinds)[n // k]
        dst = root / "val" / src.parent.name / f"planted{n:04d}"
        image = Image.open(src).convert("RGB")
        w, h = image.size
        if kind == "exact":
            path = dst.with_suffix(".png")
            path.write_bytes(src.read_bytes())
        elif kind == "resized 0.8x":
            path = dst.with_suffix(".png")
            image.resize((max(1, round(w * 0.8)), max(1, round(h * 0.8)))).save(path)
        elif kind == "JPEG q70":
            path = dst.with_suffix(".jpg")
            image.save(path, quality=70)
        elif kind == "crop 5%":
            path = dst.with_suffix(".png")
            dx, dy = max(1, round(w * 0.025)), max(1, round(h * 0.025))
            image.crop((dx, dy, w - dx, h - dy)).save(path)
        else:
            path = dst.with_suffix(".png")
            ImageEnhance.Brightness(image).enhance(1.1).save(path)
        kinds[kind].append(str(path))
    return kinds


def copies(args: argparse.Namespace) -> None:
    from trainer.data.datasets import load_imagefolder
    from trainer.data.duplicates import find_duplicates
    from trainer.use.check_data import feature_vectors, most_similar, nearest, perceptual_hashes

    distances, similar = (0, 2, 4, 6, 8), (0.95, 0.97, 0.98, 0.99)
    head = " | ".join([f"pHash <= {d}" for d in distances] + [f"features >= {c}" for c in similar])
    print(f"| data | copy | exact bytes | {head} |")
    print("|---|---|---|" + "---|" * (len(distances) + len(similar)))
    for data in args.data.split(","):
        root = Path(args.work) / f"copies-{data}"
        shutil.rmtree(root, ignore_errors=True)
        write_folder(data, root)
        kinds = plant_copies(root, args.k)
        splits = load_imagefolder(str(root))
        exact = {splits.val.paths[i] for i in find_duplicates(splits).val_copies_of_train()}
        t0 = time.perf_counter()
        where, dist = nearest(perceptual_hashes(splits.val), perceptual_hashes(splits.train))
        hashing = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, cos = most_similar(feature_vectors(splits.val), feature_vectors(splits.train))
        featuring = time.perf_counter() - t0
        by_path, by_cos = dict(zip(splits.val.paths, dist)), dict(zip(splits.val.paths, cos))
        planted = {p for paths in kinds.values() for p in paths}
        for kind, paths in kinds.items():
            cells = [f"{sum(by_path[p] <= d for p in paths) / len(paths):.0%}" for d in distances]
            cells += [f"{sum(by_cos[p] >= c for p in paths) / len(paths):.0%}" for c in similar]
            print(f"| {data} | {kind} | {sum(p in exact for p in paths) / len(paths):.0%} | {' | '.join(cells)} |")
        originals = [p for p in splits.val.paths if p not in planted]
        false = [f"{sum(by_path[p] <= d for p in originals)}" for d in distances]
        false += [f"{sum(by_cos[p] >= c for p in originals)}" for c in similar]
        print(
            f"| {data} | false positives (of {len(originals)} val images) | {sum(p in exact for p in originals)} | "
            f"{' | '.join(false)} |"
        )
        n = len(splits.train) + len(splits.val)
        print(f"<!-- {data}: {n} images, pHash {hashing:.1f} s, features {featuring:.1f} s -->")
        sys.stdout.flush()


def run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
        sys.exit(f"{what} failed")


def best_acc(run_dir: Path) -> float:
    return float(json.loads((run_dir / "metrics.json").read_text())["best"])


def every_filter(sweep: Path, changed: set[str]) -> None:
    """Precision and recall of each of cleanlab's filters on the same held-out probabilities."""
    import cleanlab.filter

    from trainer.use.check_data import FILTERS, held_out_predictions

    probs, given, names, _, _ = held_out_predictions(str(sweep), ())
    accuracy = float((probs.argmax(1) == given).float().mean())
    cells = []
    for how in FILTERS:
        found = cleanlab.filter.find_label_issues(
            labels=given.numpy(), pred_probs=probs.double().numpy(), filter_by=how
        )
        picked = {names[i] for i in found.nonzero()[0]}
        hit = len(picked & changed)
        cells.append(
            f"{how}: {len(picked)} flagged, precision {hit / max(1, len(picked)):.2f}, recall {hit / len(changed):.2f}"
        )
    print(f"<!-- held-out accuracy {accuracy:.4f}; " + "; ".join(cells) + " -->")


def labels(args: argparse.Namespace) -> None:
    print("| data | changed labels | flagged | precision | recall | val acc: clean | noisy | noisy without flagged |")
    print("|---|---|---|---|---|---|---|---|")
    for data in args.data.split(","):
        work = Path(args.work) / f"labels-{data}"
        shutil.rmtree(work, ignore_errors=True)
        classes, clean = write_folder(data, work / "clean")
        noisy = work / "noisy"
        shutil.copytree(clean, noisy)
        rng = random.Random(1)
        train = sorted((noisy / "train").glob("*/*.png"))
        changed = set()
        for path in rng.sample(train, round(args.flip * len(train))):
            other = rng.choice([c for c in classes if c != path.parent.name])
            target = noisy / "train" / other / path.name
            path.rename(target)
            changed.add(str(target))
        base = [sys.executable, "-m", "trainer", "data=imagefolder", f"trainer.epochs={args.epochs}", *RECIPE[data]]
        sweep = work / "cv"
        run([*base[:3], "-m", *base[3:], f"data.root={noisy}", "data.folds=5", "data.fold=range(5)",
             f"hydra.sweep.dir={sweep}"], f"{data} cross-validation")  # fmt: skip
        report = work / "report"
        run([sys.executable, "-m", "trainer.use.check_data", "data=imagefolder", f"data.root={noisy}",
             f"labels={sweep}", f"out={report}"], f"{data} check-data")  # fmt: skip
        flagged = {row["path"] for row in csv.DictReader(open(report / "label_issues.csv"))}
        hit = len(flagged & changed)
        every_filter(sweep, changed)
        cleaned = work / "cleaned"
        shutil.copytree(noisy, cleaned)
        for path in flagged:
            (cleaned / Path(path).relative_to(noisy)).unlink()
        accs = []
        for name, root in (("clean", clean), ("noisy", noisy), ("cleaned", cleaned)):
            run_dir = work / f"run-{name}"
            run([*base, f"data.root={root}", f"hydra.run.dir={run_dir}"], f"{data} {name}")
            accs.append(best_acc(run_dir))
        print(
            f"| {data} | {len(changed)} of {len(train)} | {len(flagged)} | {hit / max(1, len(flagged)):.2f} | "
            f"{hit / max(1, len(changed)):.2f} | {accs[0]:.4f} | {accs[1]:.4f} | {accs[2]:.4f} |"
        )
        sys.stdout.flush()


def cost(args: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image

    from trainer.data.datasets import load_imagefolder
    from trainer.data.duplicates import find_duplicates

    root = Path(args.work) / "cost"
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    made = []
    for i in range(args.files):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.jpg"
        if i % 10 == 9 and made:
            path.write_bytes(made[int(rng.integers(len(made)))].read_bytes())
        else:
            size = int(rng.integers(48, 96))
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=85)
            made.append(path)
    splits = load_imagefolder(str(root))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        found = find_duplicates(splits)
        times.append(time.perf_counter() - t0)
    run_dir = root.parent / "cost-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run([sys.executable, "-m", "trainer", "data=imagefolder", f"data.root={root}", "trainer.epochs=1",
         "data.image_size=64", f"hydra.run.dir={run_dir}"], "one epoch")  # fmt: skip
    epoch = json.loads((run_dir / "metrics.json").read_text())["history"][0]["seconds"]
    check = sorted(times)[1]
    print(
        f"{args.files} files: exact check {check:.2f} s (median of 3; {len(found.groups)} groups of copies), "
        f"one epoch {epoch:.1f} s: {check / epoch:.1%} of an epoch"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["copies", "labels", "cost"])
    ap.add_argument("--data", default="digits,mnist5k,patches")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--flip", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--work", default="outputs/data_checks")
    args = ap.parse_args()
    {"copies": copies, "labels": labels, "cost": cost}[args.what](args)


if __name__ == "__main__":
    main()

"""`check-data`: what is wrong with a data set, before a number from it is trusted.

    check-data data=<option> [data.root=DIR] [any data.* key as for train] [out=data_report]
               [near=4] [similar=0] [labels=<run folder | sweep folder>] [filter_by=low_self_confidence]

The data are read exactly as `train` reads them (the same option, split and seed). The report:
class counts per split and the imbalance; image sizes, modes and EXIF-rotated files; unreadable files;
what was left out and why; exact duplicates (file bytes, or pixels held in memory) within and across
the splits; near-duplicates across train and val: the same photo resized, re-encoded, slightly cropped
or brightened, found two ways: perceptual hashes (``imagehash``'s pHash of each image as training
decodes it, 64 bits; a val image within ``near`` bits of a train image is named) and the pretrained
EfficientNet-Lite0's pooled features (the weights this package ships; a cosine similarity of at least
``similar``, e.g. 0.99; off by default: on the built-in sets it found no kind of copy pHash missed,
at 5 times its time and many more false alarms). docs/data.md has what each catches. Writes
DIR/data_report.json and DIR/data_report.png (class counts; the closest train/val pairs side by side)
and prints a summary.

``labels=`` adds suspected label errors by confident learning (``cleanlab.filter.find_label_issues``,
``filter_by``: how many and which: by default as many as confident learning estimates, the lowest
probabilities of the given label; measured best of cleanlab's filters, docs/data.md) on held-out predictions: a run folder gives its val images' (scored as ``evaluate`` scores them); a
folder of runs, such as a cross-validation sweep (``train -m data.folds=5 'data.fold=range(5)'``), gives
every run's val images, which for a cross-validation sweep is every training image, each predicted by
the model that did not train on it. Writes DIR/label_issues.csv (file, given label, suggested label,
the model's probability of each, worst first) and DIR/label_issues.png (the 16 worst, both labels
shown). Multiclass and binary runs. Needs ``pip install "transfer-trainer[check]"`` (cleanlab, imagehash).
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data.sources import require
from trainer.errors import UserError
from trainer.use.command import parse_args, run_command, trusted
from trainer.use.outputs import atomic_file, check_folder, csv_with_header, json_with_keys

log = logging.getLogger("trainer")

KEYS = {"out": "data_report", "near": "4", "similar": "0", "labels": "", "filter_by": "low_self_confidence"}
KEYS["allow_targets"] = ""
FILTERS = (
    "low_self_confidence",
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "low_normalized_margin",
    "predicted_neq_given",
)
FEATURES_SIZE = 64  # px: the features detector's input (small images are upsampled to it)
CONFIG_PREFIXES = ("data=", "data.", "seed=")
CLOSEST = 8
WORST = 16
_REPORT = json_with_keys("data", "splits", "exact_duplicates")
REPORT_FILES = {
    "data_report.json": _REPORT,
    "data_report.png": lambda p: (p.parent / "data_report.json").is_file() and _REPORT(p.parent / "data_report.json"),
    "label_issues.csv": csv_with_header("path"),
    "label_issues.png": lambda p: (p.parent / "label_issues.csv").is_file(),
}


def _needs(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"check-data needs the {module} package: pip install 'transfer-trainer[check]' (cleanlab, imagehash)."
        ) from None


class Said(logging.Handler):
    """What building the data said (files left out, duplicates, unreadable images), kept for the report."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.lines.append(record.getMessage())


def build(overrides: list[str]) -> tuple[Any, list[str]]:
    """The splits a `train` with these data overrides would read (before any copy is left out of val),
    and what building them said."""
    from trainer.config.overrides import normalize_overrides
    from trainer.config.schema import explain_overrides
    from trainer.loop.build import build_splits

    said = Said()
    package = logging.getLogger("trainer")
    package.addHandler(said)
    try:
        splits = build_splits(explain_overrides(normalize_overrides(overrides)))  # ~/data as the shell would
    finally:
        package.removeHandler(said)
    return splits, said.lines


def describe_images(images: Any) -> dict[str, Any]:
    """Sizes, modes, EXIF-rotated and unreadable files of an image set, from each file's header only."""
    from PIL import Image

    from trainer.data.duplicates import image_files

    paths = image_files(images)
    sizes, modes, rotated, unreadable = [], Counter(), [], []
    if paths is None:
        held = getattr(images, "images", None)
        if isinstance(held, torch.Tensor):
            sizes = [(int(held.shape[-1]), int(held.shape[-2]))] * len(held)
            modes["L" if held.shape[1] == 1 else "RGB"] += len(held)
    for p in paths or []:
        try:
            with Image.open(p) as img:
                sizes.append(img.size)
                modes[img.mode] += 1
                if img.getexif().get(0x0112, 1) not in (1, None):
                    rotated.append(p)
        except Exception as e:  # noqa: BLE001 - any reason a file cannot be opened is reported, not raised
            unreadable.append(f"{p}: {type(e).__name__}")
    w = [s[0] for s in sizes] or [0]
    h = [s[1] for s in sizes] or [0]
    return {
        "images": len(images),
        "width": {"min": min(w), "median": int(np.median(w)), "max": max(w)},
        "height": {"min": min(h), "median": int(np.median(h)), "max": max(h)},
        "modes": dict(modes),
        "exif_rotated": len(rotated),
        "exif_rotated_examples": rotated[:5],
        "unreadable": unreadable,
    }


def perceptual_hashes(images: Any) -> np.ndarray:
    """pHash (64 bits) of each image as training decodes it (EXIF applied); unreadable images get a hash
    no other image is near (all bits of a random draw)."""
    imagehash = _needs("imagehash")
    from PIL import Image

    out = np.zeros(len(images), dtype=np.uint64)
    rng = np.random.default_rng(0)
    for i in range(len(images)):
        try:
            pixels = images.load(i).permute(1, 2, 0).numpy()
            bits = imagehash.phash(Image.fromarray(pixels)).hash.reshape(-1)
            out[i] = np.packbits(bits.astype(np.uint8)).view(">u8")[0]
        except Exception:  # noqa: BLE001 - an unreadable image is reported by describe_images
            out[i] = rng.integers(0, 2**63, dtype=np.uint64)
    return out


def nearest(val: np.ndarray, train: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each val hash, the closest train hash's index and its Hamming distance (bits)."""
    best, where = np.full(len(val), 65, dtype=np.int64), np.zeros(len(val), dtype=np.int64)
    for start in range(0, len(val), block):
        d = np.bitwise_count(val[start : start + block, None] ^ train[None, :]).astype(np.int64)
        where[start : start + block] = d.argmin(axis=1)
        best[start : start + block] = d.min(axis=1)
    return where, best


@torch.no_grad()
def feature_vectors(images: Any, batch: int = 128) -> torch.Tensor:
    """The pretrained EfficientNet-Lite0's pooled features of each image (unit length; an unreadable
    image: zeros, similar to nothing)."""
    import torch.nn.functional as F
    from torchvision.transforms import v2

    from trainer.data.images import BadImage
    from trainer.models.backbones import create_model

    model = create_model(num_classes=2, name="efficientnet_lite0", weights="package:efficientnet_lite0").model.eval()
    pretrained = model.pretrained_cfg
    prepare = v2.Compose(
        [
            v2.Resize((FEATURES_SIZE, FEATURES_SIZE), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pretrained["mean"], pretrained["std"]),
        ]
    )
    out = torch.zeros(len(images), model.num_features)
    for start in range(0, len(images), batch):
        xs, kept = [], []
        for i in range(start, min(start + batch, len(images))):
            try:
                xs.append(prepare(images.load(i)))
                kept.append(i)
            except BadImage:
                continue
        if xs:
            x = torch.stack(xs).contiguous(memory_format=torch.channels_last)
            out[kept] = F.normalize(model.forward_head(model.forward_features(x), pre_logits=True), dim=1)
    return out


def most_similar(val: torch.Tensor, train: torch.Tensor, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each val vector, the most similar train vector's index and their cosine similarity."""
    where, best = np.zeros(len(val), dtype=np.int64), np.zeros(len(val))
    for start in range(0, len(val), block):
        values, index = (val[start : start + block] @ train.T).max(dim=1)
        where[start : start + block], best[start : start + block] = index.numpy(), values.numpy()
    return where, best


def class_counts(splits: Any) -> dict[str, dict[str, int]] | None:
    """Images per class in each split (multilabel: positives); None for segmentation."""
    from trainer.config.tasks import task_named
    from trainer.data.counts import class_counts as counted

    if task_named(splits.task).per_pixel:
        return None
    n = len(splits.classes)
    return {s: dict(zip(splits.classes, counted(getattr(splits, s).targets, n, splits.task))) for s in ("train", "val")}


def report(splits: Any, said: list[str], near: int, similar: float, data: str) -> tuple[dict[str, Any], list[Any]]:
    """data_report.json's content, and the closest cross-split pairs (images) for the picture."""
    from trainer.data.duplicates import find_duplicates

    exact = find_duplicates(splits)
    counts = class_counts(splits)
    train_counts = list(counts["train"].values()) if counts else []
    hashes = {name: perceptual_hashes(getattr(splits, name)) for name in ("train", "val")}
    where, dist = nearest(hashes["val"], hashes["train"])
    order = np.argsort(dist, kind="stable")
    names = {s: exact.names.get(s) or [f"{s} #{i}" for i in range(len(getattr(splits, s)))] for s in ("train", "val")}
    leaked = set(exact.val_copies_of_train())
    close = [int(i) for i in order if dist[i] <= near and int(i) not in leaked]
    features: dict[str, Any] = {"detector": "off (similar=0)"}
    if similar > 0:
        f_where, cos = most_similar(*(feature_vectors(getattr(splits, s)) for s in ("val", "train")))
        alike = [int(i) for i in np.argsort(-cos, kind="stable") if cos[i] >= similar and int(i) not in leaked]
        features = {
            "detector": f"EfficientNet-Lite0 pooled features, a val image with cosine similarity >= {similar} to a train image",
            "val_near_train": len(alike),
            "pairs": [[names["val"][i], names["train"][int(f_where[i])], round(float(cos[i]), 4)] for i in alike[:50]],
        }
    content = {
        "data": data,
        "task": splits.task,
        "classes": list(splits.classes),
        "splits": {s: describe_images(getattr(splits, s)) for s in ("train", "val")},
        "class_counts": counts,
        "imbalance": round(max(train_counts) / max(1, min(train_counts)), 3) if train_counts else None,
        "exact_duplicates": {
            "val_copies_of_train": len(leaked),
            "extra_within_train": exact.extra_within("train"),
            "extra_within_val": exact.extra_within("val"),
            "examples": [[exact.name(m) for m in g] for g in exact.groups[:10]],
        },
        "near_duplicates": {
            "detector": f"pHash (imagehash, 64 bits), a val image within {near} bits of a train image",
            "val_near_train": len(close),
            "pairs": [[names["val"][i], names["train"][int(where[i])], int(dist[i])] for i in close[:50]],
        },
        "similar_features": features,
        "said_while_reading": said,
    }
    pairs = [(splits.val.load(int(i)), splits.train.load(int(where[i])), int(dist[i])) for i in order[:CLOSEST]]
    return content, pairs


def held_out_predictions(
    target: str, allow: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor, list[str], Any, list[str]]:
    """Probabilities, given labels, names and an image loader of every val image of the run at
    ``target``, or of each run under it (a sweep); and the classes."""
    from trainer.config.tasks import task_named
    from trainer.models.trained import load_trained
    from trainer.use.evaluate import on_val_split

    folder = Path(target).expanduser()
    runs = [folder] if (folder / "checkpoints").is_dir() or folder.suffix == ".pt" else []
    runs = runs or sorted(p.parent.parent for p in folder.glob("*/checkpoints/best.pt"))
    if not runs:
        raise UserError(f"labels={target!r}: no run there (a run folder with checkpoints/best.pt, or a sweep of them).")
    probs, targets, names, loaders, classes = [], [], [], [], None
    for run in runs:
        trained = load_trained(str(run), allow)
        if not task_named(trained.task).one_label:
            raise UserError(
                f"labels={target!r}: label issues are found for multiclass and binary runs; {run} is {trained.task}."
            )
        if classes is not None and trained.classes != classes:
            raise UserError(f"labels={target!r}: the runs have different classes ({classes} and {trained.classes}).")
        classes = trained.classes
        scored = on_val_split(trained, "cpu").get("scored")
        if scored is None:
            continue
        p, t, n, image_of = scored
        probs.append(p), targets.append(t), loaders.extend((image_of, i) for i in range(len(n)))
        names.extend(
            n if len(runs) == 1 else [f"{name} ({run.name})" if name.startswith("val #") else name for name in n]
        )
    if not probs:
        raise UserError(f"labels={target!r}: its runs scored no images.")
    return torch.cat(probs), torch.cat(targets), names, loaders, classes or []


def label_issues(target: str, allow: tuple[str, ...], out: Path, filter_by: str = FILTERS[0]) -> int:
    """label_issues.csv and .png from held-out predictions (cleanlab); the number of suspected errors."""
    filters = _needs("cleanlab.filter")
    from trainer.runs.csvcells import SafeWriter
    from trainer.runs.plots import image_grid_png

    probs, given, names, loaders, classes = held_out_predictions(target, allow)
    ranked = filters.find_label_issues(
        labels=given.numpy(),
        pred_probs=probs.double().numpy(),
        filter_by=filter_by,
        return_indices_ranked_by="self_confidence",
    )
    with atomic_file(out / "label_issues.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = SafeWriter(f)
        writer.writerow(["path", "given", "suggested", "p_given", "p_suggested"])
        for i in ranked:
            g, s = int(given[i]), int(probs[i].argmax())
            writer.writerow(
                [names[i], classes[g], classes[s], round(float(probs[i, g]), 6), round(float(probs[i, s]), 6)]
            )
    images, titles = [], []
    for i in ranked[:WORST]:
        image_of, k = loaders[int(i)]
        g, s = int(given[i]), int(probs[i].argmax())
        images.append(image_of(k))
        titles.append(f"given {classes[g]} ({probs[i, g]:.2f})\nmodel: {classes[s]} ({probs[i, s]:.2f})")
    with atomic_file(out / "label_issues.png") as tmp:
        tmp.write_bytes(image_grid_png(images, titles, empty="no suspected label errors"))
    return len(ranked)


def check_data(argv: list[str]) -> tuple[dict[str, Any], Path]:
    from trainer.runs.plots import data_report_png

    overrides = [a for a in argv if a.startswith(CONFIG_PREFIXES)]
    args = parse_args([a for a in argv if a not in overrides], KEYS, (), __doc__ or "")
    if not any(o.startswith("data=") for o in overrides):
        raise UserError(
            "check-data needs the data to check: data=imagefolder data.root=DIR (or any data option train takes)."
        )
    try:
        near = int(args["near"])
    except ValueError:
        raise UserError(f"near={args['near']!r}: give a number of bits, 0 to 64 (e.g. near=4).") from None
    if not 0 <= near <= 64:
        raise UserError(f"near={near}: give a number of bits, 0 to 64 (e.g. near=4).")
    try:
        similar = float(args["similar"])
    except ValueError:
        similar = -1.0
    if not 0 <= similar <= 1:
        raise UserError(f"similar={args['similar']!r}: give a cosine similarity, 0 to 1 (e.g. similar=0.97; 0: off).")
    if str(args["filter_by"]) not in FILTERS:
        raise UserError(f"filter_by={args['filter_by']!r} is not valid: use one of {', '.join(FILTERS)}.")
    out = Path(str(args["out"])).expanduser()
    check_folder(out, REPORT_FILES, "a data report")
    _needs("imagehash")
    splits, said = build(overrides)
    require(splits.train, "verify", "check-data")
    content, pairs = report(splits, said, near, similar, " ".join(overrides))
    out.mkdir(parents=True, exist_ok=True)
    if args["labels"]:
        allow = trusted(args["allow_targets"])
        content["label_issues"] = label_issues(str(args["labels"]), allow, out, str(args["filter_by"]))
    with atomic_file(out / "data_report.png") as tmp:
        tmp.write_bytes(data_report_png(content.get("class_counts"), content["imbalance"], pairs))
    with atomic_file(out / "data_report.json") as tmp:  # last: a report with its json is whole
        tmp.write_text(json.dumps(content, indent=2))
    return content, out


def summary(content: dict[str, Any], out: Path) -> list[str]:
    splits, exact, near = content["splits"], content["exact_duplicates"], content["near_duplicates"]
    lines = [
        f"{content['data']}: {splits['train']['images']} train / {splits['val']['images']} val images, "
        f"{len(content['classes'])} classes"
        + (f", imbalance {content['imbalance']}x" if content.get("imbalance") else ""),
        f"exact duplicates: {exact['val_copies_of_train']} val images are copies of train images; "
        f"{exact['extra_within_train']} extra copies within train, {exact['extra_within_val']} within val",
        f"near-duplicates: {near['val_near_train']} val images are within the pHash distance of a train image"
        + (f" (e.g. {near['pairs'][0][0]} ~ {near['pairs'][0][1]})" if near["pairs"] else ""),
    ]
    features = content["similar_features"]
    if "pairs" in features:
        lines.append(
            f"similar by pretrained features: {features['val_near_train']} val images"
            + (f" (e.g. {features['pairs'][0][0]} ~ {features['pairs'][0][1]})" if features["pairs"] else "")
        )
    for name in ("train", "val"):
        s = splits[name]
        lines.append(
            f"{name}: {s['width']['min']}-{s['width']['max']} x {s['height']['min']}-{s['height']['max']} px, "
            f"modes {s['modes']}, {s['exif_rotated']} EXIF-rotated, {len(s['unreadable'])} unreadable"
        )
    lines += [f"said while reading: {line}" for line in content["said_while_reading"]]
    if "label_issues" in content:
        lines.append(f"suspected label errors: {content['label_issues']} (label_issues.csv, label_issues.png)")
    lines.append(f"report: {out}/data_report.json, data_report.png")
    return lines


def main() -> None:
    def body() -> None:
        content, out = check_data(sys.argv[1:])
        print("\n".join(summary(content, out)))

    run_command(body)


if __name__ == "__main__":
    main()

"""`evaluate`: score a trained model, on its run's validation split or on another labelled folder.

    evaluate checkpoint=<run folder | .pt> [data.root=<folder of class folders>] [out=DIR]
             [tta=none|flip] [data.batch_size=64] [trainer.device=auto]

Without data.root the run is rebuilt from the config stored in the checkpoint and its val split
scored as training did. With data.root, every image under the folder's class folders is scored;
the folders are matched to the model's classes by name (any order), and a class the model does not
know, or one it knows that the folder lacks, is a clear error. Writes metrics.json, per_class.csv and
confusion_matrix.png into DIR (default: the run folder's eval/ or eval-<folder name>/) and prints
the scores and the per-class table; for multiclass and binary models also errors.csv (every
misclassified image, worst first), errors.png (the worst 16) and the most-confused class pairs; for
segmentation lowest_iou.csv (every image by its IoU, lowest first) and lowest_iou.png (the 8 lowest:
image, true and predicted mask side by side). ``tta=flip`` scores the mean of the logits on each image
and on its mirror image (as ``predict tta=flip`` does); metrics.json says which.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from trainer.config.tasks import task_named
from trainer.errors import UserError
from trainer.models.trained import Trained, load_trained
from trainer.runs.csvcells import SafeWriter
from trainer.use.command import parse_args, run_command, trusted
from trainer.use.mistakes import SegmentationScores, lowest_iou_png, write_iou_csv
from trainer.use.outputs import atomic_file, check_folder, csv_with_header, json_with_keys

log = logging.getLogger("trainer")

KEYS = {
    "checkpoint": None,
    "data.root": "",
    "out": "",
    "data.batch_size": "64",
    "trainer.device": "auto",
    "tta": "none",
}
KEYS["allow_targets"] = ""


def on_val_split(trained: Trained, device: str, tta: str = "none") -> dict[str, Any]:
    """The run's data, model and loss rebuilt from its stored config (``build_parts``: no optimizer,
    timing, probe or search); its val split scored as training scored it each epoch."""
    from trainer.loop.build import build_parts
    from trainer.runs.checkpoint import inference_weights

    device = "cpu" if device == "auto" and not torch.cuda.is_available() else device
    parts = build_parts(trained.config, changes={"resume": None, "trainer.device": device})
    if list(trained.classes) != parts.classes:
        raise UserError(
            f"{trained.checkpoint} was trained on classes {trained.classes}, the data now has {parts.classes}."
        )
    parts.built.model.load_state_dict(inference_weights(trained.state))
    task = task_named(trained.task)
    batches: Any = [] if task.one_label else None
    if task.per_pixel:
        batches = SegmentationScores(parts.ignore_index)
    scalars, per_class, confusion = parts.evaluate(keep=batches, tta=tta)  # one pass: the scores and each image's
    dataset = parts.loaders.val.dataset
    split = getattr(dataset, "images", dataset)  # the image set under the loader's transform
    paths = getattr(split, "paths", None)
    inside = getattr(split, "names", None)  # images inside a container: shard.tar#key, path:split[row]
    names = [str(p) for p in paths or inside] if paths or inside else [f"val #{i}" for i in range(len(dataset))]  # type: ignore[arg-type]
    unreadable = sorted(parts.bad_images.seen)
    masks = [str(m) for m in getattr(split, "masks", [])] if paths else []
    kept = readable_indices([(n, *masks[i : i + 1]) for i, n in enumerate(names)], unreadable)
    result = {"scalars": scalars, "per_class": per_class, "confusion": confusion, "images": len(kept)}
    result["unreadable"] = unreadable
    if isinstance(batches, SegmentationScores):
        return {**result, **lowest_iou(batches, dataset, [names[i] for i in kept], kept)}
    if batches:
        result["logits"] = (torch.cat([out for out, _ in batches]), torch.cat([y for _, y in batches]))
    scored = _scored(batches) if batches else None
    if scored is not None and len(scored[1]) != len(kept):  # cannot happen: each skipped image is named
        log.warning("errors.csv left out: %d scored images for %d readable ones", len(scored[1]), len(kept))
        scored = None
    if scored is not None:
        result["scored"] = (*scored, [names[i] for i in kept], lambda i: split.load(kept[i]))
    return result


def readable_indices(files: list[tuple[str, ...]], unreadable: list[str]) -> list[int]:
    """The indices of the images none of whose files (the image, a mask) ``unreadable`` names: each
    problem starts with its file's path."""
    return [i for i, names in enumerate(files) if not any(p.startswith(n + ": ") for n in names for p in unreadable)]


def lowest_iou(scores: SegmentationScores, dataset: Any, names: list[str], kept: list[int]) -> dict[str, Any]:
    """The segmentation report's part: each readable val image's IoU, its name, and its image and true
    mask as the model saw them (the val transform's output)."""
    if len(scores) != len(kept):  # cannot happen: each skipped image is named
        log.warning("lowest_iou.csv left out: %d scored images for %d readable ones", len(scores), len(kept))
        return {}
    return {"segmentation": (scores, names, lambda i: dataset[kept[i]])}


def _scored(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices) of the val images, in the split's order (the val loader keeps it);
    a binary target ``[0.]`` / ``[1.]`` is its class."""
    from trainer.use.mistakes import probabilities

    probs = torch.cat([probabilities(out) for out, _ in batches])
    targets = torch.cat([y.view(len(y), -1)[:, -1].long() if y.dim() > 1 else y.long() for _, y in batches])
    return probs, targets


def matched_folder(trained: Trained, root: str) -> tuple[list[str], list[int]]:
    """The images under ``root``'s class folders and their classes, in the model's order."""
    from trainer.data.datasets import scan_class_folders
    from trainer.data.files import LeftOut

    if not task_named(trained.task).one_label:
        raise UserError(f"data.root= scores folders of class folders; this model's task is {trained.task}.")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(f"data.root={root!r}: no such folder.")
    left = LeftOut()
    names, paths, targets = scan_class_folders(folder, left)
    left.say(f"data.root={folder}")
    missing, extra = sorted(set(trained.classes) - set(names)), sorted(set(names) - set(trained.classes))
    if missing or extra:
        raise UserError(
            f"data.root={root!r} has class folders {names}, the model was trained on {trained.classes}"
            + (f"; missing: {missing}" if missing else "")
            + (f"; unknown to the model: {extra}" if extra else "")
            + ". Give a folder with one subfolder per class of the model, named as in training."
        )
    index = {c: i for i, c in enumerate(trained.classes)}
    targets = [index[names[t]] for t in targets]  # the folder's order -> the model's order
    return paths, targets


def on_folder(trained: Trained, root: str, batch_size: int, device_name: str, tta: str = "none") -> dict[str, Any]:
    """Every image under ``root``'s class folders, classes matched to the model's by name."""
    from tqdm import tqdm

    from trainer.data.images import BadImage, decode_rgb
    from trainer.loop.devices import resolve_device
    from trainer.loop.parts import with_tta
    from trainer.metrics import Metrics
    from trainer.models.trained import channels_last, upright
    from trainer.use.mistakes import probabilities
    from trainer.use.predict import preprocess

    paths, targets = matched_folder(trained, root)
    device = resolve_device(device_name)
    layout = torch.channels_last if channels_last(trained) else torch.contiguous_format  # as the run scored
    model = with_tta(trained.model.to(device, memory_format=layout), tta, per_pixel=False)
    metrics = Metrics(trained.task, len(trained.classes), device)
    transform, bad, probs, kept, raw = preprocess(trained), [], [], [], []
    exif = upright(trained)
    for start in tqdm(range(0, len(paths), batch_size), desc="evaluate", unit="batch"):
        xs, ys = [], []
        for path, target in zip(paths[start : start + batch_size], targets[start : start + batch_size]):
            try:
                xs.append(transform(decode_rgb(path, exif)))
                ys.append(target)
                kept.append((str(path), target))
            except BadImage as e:
                bad.append(str(e))
        if xs:
            with torch.no_grad():
                logits = model(torch.stack(xs).to(device, memory_format=layout))
                metrics.update(logits, torch.tensor(ys, device=device))
                probs.append(probabilities(logits).cpu())
                raw.append(logits.float().cpu())
    scalars, per_class, confusion = metrics.compute()
    result = {"scalars": scalars, "per_class": per_class, "confusion": confusion, "images": len(paths) - len(bad)}
    result["unreadable"] = bad
    if kept:
        names = [p for p, _ in kept]
        image_of = lambda i: decode_rgb(names[i], exif)  # noqa: E731
        result["scored"] = (torch.cat(probs), torch.tensor([t for _, t in kept]), names, image_of)
        targets = torch.tensor([t for _, t in kept])
        one_output = task_named(trained.task).one_output
        result["logits"] = (torch.cat(raw), targets.float().view(-1, 1) if one_output else targets)
    return result


def calibration_figures(trained: Trained, logits: torch.Tensor, targets: torch.Tensor, fit_here: bool) -> dict:
    """ECE, NLL and Brier of the scored images without and with the run's temperature (loop/calibration.py)."""
    from trainer.loop.calibration import figures, stored_temperature

    task, temperature = task_named(trained.task), stored_temperature(trained.state)
    out: dict[str, Any] = {"without_temperature": figures(logits, targets, task, None)}
    if temperature is not None:
        out["temperature"] = temperature.tolist()
        out["with_temperature"] = figures(logits, targets, task, temperature)
        if fit_here:
            out["note"] = "the temperature was fit on these images; the run's metrics.json has held-out figures"
    return out


def write_report(result: dict[str, Any], trained: Trained, out: Path, data: str) -> None:
    from trainer.runs.plots import confusion_png

    out.mkdir(parents=True, exist_ok=True)
    classes = task_named(trained.task).scored(trained.classes)
    report = {"checkpoint": str(trained.checkpoint), "data": data, "images": result["images"], **result["scalars"]}
    report["tta"] = result.get("tta", "none")
    if "calibration" in result:
        report["calibration"] = result["calibration"]
    report["unreadable"] = result.get("unreadable", [])
    report["per_class"] = {m: dict(zip(classes, v)) for m, v in result["per_class"].items()}
    with atomic_file(out / "per_class.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = SafeWriter(f)
        writer.writerow(["class", *result["per_class"]])
        for i, c in enumerate(classes):
            writer.writerow([c, *(round(v[i], 6) for v in result["per_class"].values())])
    if result["confusion"] is not None:
        with atomic_file(out / "confusion_matrix.png") as tmp:
            tmp.write_bytes(confusion_png(result["confusion"], trained.classes))
    if result.get("scored") is not None:
        write_mistakes(result, trained.classes, out)
    if result.get("segmentation") is not None:
        scores, names, sample_of = result["segmentation"]
        with atomic_file(out / "lowest_iou.csv") as tmp:
            write_iou_csv(scores, names, tmp)
        with atomic_file(out / "lowest_iou.png") as tmp:
            tmp.write_bytes(lowest_iou_png(scores, names, sample_of, list(trained.classes)))
        result["lowest"] = [(Path(names[i]).name, scores.ious[i]) for i in scores.lowest()[:5]]
    with atomic_file(out / "metrics.json") as tmp:  # last: a report with its metrics.json is whole
        tmp.write_text(json.dumps(report, indent=2))


def write_mistakes(result: dict[str, Any], classes: list[str], out: Path) -> None:
    """errors.csv and errors.png; the most-confused pairs kept for the printout."""
    from trainer.use.mistakes import errors_png, find_mistakes, most_confused, write_errors_csv

    probs, targets, names, image_of = result["scored"]
    mistakes = find_mistakes(probs, targets, names, classes)
    with atomic_file(out / "errors.csv") as tmp:
        write_errors_csv(mistakes, tmp)
    with atomic_file(out / "errors.png") as tmp:
        tmp.write_bytes(errors_png(mistakes, image_of))
    result["mistakes"], result["confused"] = len(mistakes), most_confused(mistakes)


_REPORT = json_with_keys("checkpoint", "data", "images", "per_class")
REPORT_FILES = {
    "metrics.json": _REPORT,
    "per_class.csv": csv_with_header("class"),
    "confusion_matrix.png": lambda p: (p.parent / "metrics.json").is_file() and _REPORT(p.parent / "metrics.json"),
    "errors.csv": csv_with_header("path"),
    "errors.png": lambda p: (p.parent / "metrics.json").is_file() and _REPORT(p.parent / "metrics.json"),
    "lowest_iou.csv": csv_with_header("path"),
    "lowest_iou.png": lambda p: (p.parent / "metrics.json").is_file() and _REPORT(p.parent / "metrics.json"),
}


def evaluate(args: dict[str, Any]) -> tuple[dict[str, Any], Trained, Path]:
    if args["out"]:
        check_folder(Path(str(args["out"])).expanduser(), REPORT_FILES, "an evaluate report")
    from trainer.loop.parts import TTA
    from trainer.models.trained import NOT_FLIPPED, trained_with_flips

    tta = str(args.get("tta", "none"))
    if tta not in TTA:
        raise UserError(f"tta={tta!r} is not valid: use {' or '.join(TTA)}.")
    trained = load_trained(str(args["checkpoint"]), trusted(args["allow_targets"]))
    if tta == "flip" and not trained_with_flips(trained):
        log.warning(NOT_FLIPPED.format(augment=trained.config.data.get("augment")))
    root = str(args["data.root"])
    if root:
        result = on_folder(trained, root, int(args["data.batch_size"]), str(args["trainer.device"]), tta)
    else:
        result = on_val_split(trained, str(args["trainer.device"]), tta)
    result["tta"] = tta
    if "logits" in result:
        result["calibration"] = calibration_figures(trained, *result.pop("logits"), fit_here=not root)
    run_dir = trained.checkpoint.parent.parent if trained.checkpoint.parent.name == "checkpoints" else None
    default = (run_dir or trained.checkpoint.parent) / ("eval-" + Path(root).name if root else "eval")
    out = Path(str(args["out"])).expanduser() if args["out"] else default
    check_folder(out, REPORT_FILES, "an evaluate report")
    write_report(result, trained, out, root or "val split")
    return result, trained, out


def main() -> None:
    def body() -> None:
        args = parse_args(sys.argv[1:], KEYS, ("checkpoint",), __doc__ or "")
        result, trained, out = evaluate(args)
        scalars = "  ".join(f"{k} {v:.4f}" for k, v in result["scalars"].items())
        print(f"{trained.checkpoint} (epoch {trained.state['epoch']}, {result['images']} images): {scalars}")
        for problem in result.get("unreadable", []):
            print(f"  could not be read, left out of the scores: {problem}")
        metrics = list(result["per_class"])
        classes = task_named(trained.task).scored(trained.classes)
        print(f"  {'class':>12}  " + "  ".join(f"{m:>9}" for m in metrics))
        for i, c in enumerate(classes):
            print(f"  {c:>12}  " + "  ".join(f"{result['per_class'][m][i]:9.4f}" for m in metrics))
        if "mistakes" in result:
            pairs = ", ".join(f"{t} -> {p} ({n})" for t, p, n in result["confused"]) or "none"
            print(
                f"misclassified: {result['mistakes']} of {result['images']}; most confused (true -> predicted): {pairs}"
            )
        calibration = result.get("calibration")
        if calibration and "with_temperature" in calibration:
            a, b = calibration["without_temperature"], calibration["with_temperature"]
            print(
                f"calibration (ECE / NLL / Brier): {a['ece']:.4f} / {a['nll']:.4f} / {a['brier']:.4f} as the network "
                f"gives them; {b['ece']:.4f} / {b['nll']:.4f} / {b['brier']:.4f} with its temperature (what predict gives)"
            )
        if "lowest" in result:
            print("lowest IoU: " + ", ".join(f"{name} ({iou:.3f})" for name, iou in result["lowest"]))
        extra = ", errors.csv, errors.png" if "mistakes" in result else ""
        extra += ", lowest_iou.csv, lowest_iou.png" if "lowest" in result else ""
        print(f"report: {out}/metrics.json, per_class.csv, confusion_matrix.png{extra}")

    run_command(body)


if __name__ == "__main__":
    main()

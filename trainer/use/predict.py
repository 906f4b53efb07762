"""`predict`: a trained model on new images, with the preprocessing it was trained with.

    predict checkpoint=<run folder | .pt> source=<folder | image | glob> [out=predictions.csv]
            [topk=5] [tta=none|flip] [threshold=0.5] [data.batch_size=64] [trainer.device=auto]
            [explain=none|gradcam] [explain.layer=<module name>]

One CSV row per image: multiclass, the top-k labels with their probabilities; binary, the label and
the positive class's probability; multilabel, the labels over the threshold (and every class's
probability); segmentation, the path of a mask PNG (class index per pixel, at the image's own size)
written into ``<out without .csv>_masks/``. Files that cannot be read are listed in the CSV with
their error and counted at the end; they do not stop the others. ``explain=gradcam`` (classifiers)
also writes a Grad-CAM heatmap over each image into ``<out without .csv>_gradcam/`` and names it in a
``gradcam`` column (trainer/use/explain.py).
"""

from __future__ import annotations

import csv
import glob
import logging
from pathlib import Path
from typing import Any

import torch

from trainer.data.images import IMAGE_EXTENSIONS, BadImage, decode_rgb
from trainer.models.trained import Trained, load_trained
from trainer.use.command import parse_args, run_command, trusted
from trainer.use.outputs import atomic_file, check_file, csv_with_header

KEYS = {
    "checkpoint": None,
    "source": None,
    "out": "predictions.csv",
    "topk": "5",
    "tta": "none",
    "threshold": "0.5",
    "data.batch_size": "64",
    "trainer.device": "auto",
    "explain": "none",
    "explain.layer": "",
    "allow_targets": "",
}
log = logging.getLogger("trainer")


def find_images(source: str) -> list[str]:
    """A folder (searched recursively), one image, or a glob pattern: the image files, sorted."""
    p = Path(source).expanduser()
    if p.is_dir():
        found = [str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    elif p.is_file():
        found = [str(p)]
    else:
        found = sorted(f for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    if not found:
        from trainer.errors import UserError

        raise UserError(
            f"source={source!r}: no images there. Give a folder of images, one image file, or a quoted "
            f"glob such as 'source=photos/*.jpg' ({', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    return found


def preprocess(trained: Trained) -> Any:
    """The evaluation transform the model was trained with (resize, center crop, normalize)."""
    from torchvision.transforms import v2

    from trainer.data.transforms import build_transforms

    if trained.task == "segmentation":
        spec = trained.input_spec
        return v2.Compose(
            [
                v2.Resize((spec["size"], spec["size"]), antialias=True),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(spec["mean"], spec["std"]),
            ]
        )
    return build_transforms("none", trained.input_spec, train=False, task=trained.task)


@torch.no_grad()
def forward(trained: Trained, x: torch.Tensor, device: torch.device, tta: str) -> torch.Tensor:
    """Probabilities for a batch (softmax or sigmoid by task), averaged with the mirrored batch under tta=flip."""
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        logits = trained.model(x).float()
        if tta == "flip":
            mirrored = trained.model(torch.flip(x, dims=[-1])).float()
            logits = (logits + (torch.flip(mirrored, dims=[-1]) if trained.task == "segmentation" else mirrored)) / 2
    if trained.task in ("binary", "multilabel") or (trained.task == "segmentation" and logits.shape[1] == 1):
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def rows_for(trained: Trained, probs: torch.Tensor, topk: int, threshold: float) -> list[dict[str, Any]]:
    classes = trained.classes
    rows: list[dict[str, Any]] = []
    for p in probs:
        if trained.task == "binary":
            positive = float(p.reshape(-1)[0])
            rows.append({"label": classes[1] if positive >= threshold else classes[0], "probability": positive})
        elif trained.task == "multilabel":
            on = [c for c, v in zip(classes, p.tolist()) if v >= threshold]
            rows.append({"labels": ";".join(on), **{f"p({c})": round(float(v), 6) for c, v in zip(classes, p)}})
        else:
            values, indices = p.topk(min(topk, len(classes)))
            row: dict[str, Any] = {}
            for rank, (v, i) in enumerate(zip(values.tolist(), indices.tolist()), 1):
                row[f"label_{rank}"], row[f"prob_{rank}"] = classes[i], round(v, 6)
            rows.append(row)
    return rows


def save_mask(probs: torch.Tensor, size: tuple[int, int], path: Path) -> None:
    """The per-pixel class (argmax, or > 0.5 for one channel) at the image's own size, as a PNG."""
    import torch.nn.functional as F
    from PIL import Image

    full = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    mask = (full[0] > 0.5).to(torch.uint8) if full.shape[0] == 1 else full.argmax(0).to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.numpy()).save(path)


def explain_batch(
    explainer: Any, x: torch.Tensor, probs: torch.Tensor, paths: list[str], folder: Path, spec: dict[str, Any]
) -> list[Path]:
    """Each image's heatmap overlay written into ``folder``; their paths."""
    from trainer.use.explain import save_overlay

    written = []
    for path, image, heat in zip(paths, x, explainer.heatmaps(x, probs)):
        target = folder / (Path(path).stem + ".png")
        save_overlay(image, heat, spec, target)
        written.append(target)
    return written


def checked_args(args: dict[str, Any]) -> tuple[str, str, int, float, int]:
    """tta, explain, topk, threshold and data.batch_size, checked."""
    from trainer.errors import UserError

    tta, explain = str(args["tta"]), str(args["explain"])
    if tta not in ("none", "flip"):
        raise UserError(f"tta={tta!r} is not valid: use none or flip.")
    if explain not in ("none", "gradcam"):
        raise UserError(f"explain={explain!r} is not valid: use gradcam (a heatmap per image) or none.")
    try:
        topk, threshold, batch_size = int(args["topk"]), float(args["threshold"]), int(args["data.batch_size"])
    except ValueError as e:
        raise UserError(f"topk, threshold and data.batch_size take numbers ({e}).") from None
    if topk < 1 or batch_size < 1 or not 0 < threshold < 1:
        raise UserError("topk and data.batch_size must be >= 1 and threshold between 0 and 1.")
    return tta, explain, topk, threshold, batch_size


def make_explainer(trained: Trained, layer: str, folder: Path) -> Any:
    """explain=gradcam: the Grad-CAM explainer of this model (trainer/use/explain.py)."""
    from trainer.use.explain import Explainer

    explainer = Explainer(trained.model, trained.task, int(trained.input_spec["size"]), layer or None)
    log.info("explain=gradcam: Grad-CAM of layer %s -> %s/", explainer.layer_name, folder)
    return explainer


def predict(args: dict[str, Any]) -> tuple[Path, int, int]:
    """Run the command; returns the CSV written, the images predicted and those that could not be read."""
    from tqdm import tqdm

    from trainer.loop.build import resolve_device

    tta, explain, topk, threshold, batch_size = checked_args(args)
    out = Path(str(args["out"])).expanduser()
    check_file(out, csv_with_header("path"), "a predictions CSV")
    trained = load_trained(str(args["checkpoint"]), trusted(args["allow_targets"]))
    device = resolve_device(str(args["trainer.device"]))
    trained.model.to(device)
    paths = find_images(str(args["source"]))
    masks, heatmaps = out.with_name(out.stem + "_masks"), out.with_name(out.stem + "_gradcam")
    transform = preprocess(trained)
    explainer = make_explainer(trained, str(args["explain.layer"]), heatmaps) if explain == "gradcam" else None
    rows: list[dict[str, Any]] = []
    bad = 0
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", unit="batch"):
        batch, images, sizes = [], [], []
        for path in paths[start : start + batch_size]:
            try:
                image = decode_rgb(path)
            except BadImage as e:
                rows.append({"path": path, "error": str(e)})
                bad += 1
                continue
            batch.append(path)
            sizes.append(tuple(image.shape[-2:]))
            images.append(transform(image))
        if not batch:
            continue
        x = torch.stack(images).to(device)
        probs = forward(trained, x, device, tta).cpu()
        if explainer is not None:
            written = explain_batch(explainer, x, probs, batch, heatmaps, trained.input_spec)
            rows += [
                {"path": path, **row, "gradcam": str(h)}
                for path, row, h in zip(batch, rows_for(trained, probs, topk, threshold), written)
            ]
        elif trained.task == "segmentation":
            for path, p, size in zip(batch, probs, sizes):
                mask = masks / (Path(path).stem + ".png")
                save_mask(p, size, mask)
                rows.append({"path": path, "mask": str(mask)})
        else:
            rows += [{"path": path, **row} for path, row in zip(batch, rows_for(trained, probs, topk, threshold))]
    columns = list(dict.fromkeys(k for row in rows for k in row if k != "error")) + ["error"]
    with atomic_file(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        order = {path: i for i, path in enumerate(paths)}  # unreadable files were recorded first in their batch
        writer.writerows(sorted(rows, key=lambda r: order[r["path"]]))
    return out, len(paths) - bad, bad


def main() -> None:
    def body() -> None:
        import sys

        args = parse_args(sys.argv[1:], KEYS, ("checkpoint", "source"), __doc__ or "")
        out, done, bad = predict(args)
        print(f"{done} images predicted -> {out}" + (f"; {bad} could not be read (listed in the CSV)" if bad else ""))

    run_command(body)


if __name__ == "__main__":
    main()

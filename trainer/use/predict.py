"""`predict`: a trained model on new images, with the preprocessing it was trained with.

    predict checkpoint=<run folder | .pt> source=<folder | image | glob> [out=predictions.csv]
            [topk=5] [tta=none|flip] [threshold=0.5] [data.batch_size=64] [trainer.device=auto]
            [runtime=auto|torch|onnx|openvino] [quantize=none|int8]
            [explain=none|gradcam] [explain.layer=<module name>] [calibration=temperature|none]

One CSV row per image: multiclass, the top-k labels with their probabilities; binary, the label and
the positive class's probability; multilabel, the labels over the threshold (and every class's
probability); segmentation, the path of a mask PNG (class index per pixel, at the image's own size)
written into ``<out without .csv>_masks/``. Files that cannot be read are listed in the CSV with
their error and counted at the end; they do not stop the others. ``runtime``: who runs the model
(trainer/use/runtimes.py): torch, or the model exported (and checked) for ONNX Runtime or OpenVINO on
the CPU; ``auto`` times the installed ones on the first batch and keeps the fastest (torch for fewer
than AUTO_FROM images, where an export costs more than it saves). ``quantize=int8``: the int8 model
(onnx or openvino), refused below 99% top-1 agreement with fp32 torch. ``explain=gradcam`` (classifiers)
also writes a Grad-CAM heatmap over each image into ``<out without .csv>_gradcam/`` and names it in a
``gradcam`` column (trainer/use/explain.py). ``calibration=temperature`` (the default) divides the logits
by the temperature the run fit on its val split at the end of training (kept in best.pt;
trainer/loop/calibration.py), so that a probability of 0.9 is right about 90% of the time; the labels
chosen do not change. ``none``: the probabilities as the network gives them.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from trainer.config.tasks import task_named
from trainer.data.files import HIDDEN, LeftOut, is_hidden, list_images, readable_extensions
from trainer.data.images import BadImage, decode_rgb
from trainer.models.trained import (
    NOT_FLIPPED,
    Trained,
    channels_last,
    load_trained,
    preprocess,
    trained_with_flips,
    upright,
)
from trainer.runs.csvcells import SafeDictWriter
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
    "runtime": "auto",
    "quantize": "none",
    "explain": "none",
    "explain.layer": "",
    "calibration": "temperature",
    "allow_targets": "",
}
log = logging.getLogger("trainer")


def find_images(source: str) -> list[str]:
    """A folder (searched recursively), one image, or a glob pattern: the image files, sorted. Hidden
    files and folders, OS and zip leftovers and files that are not images are left out, said once."""
    p, left = Path(source).expanduser(), LeftOut()
    if p.is_dir():
        found = [str(f) for f in list_images(p, left)]
    elif p.is_file():
        found = [str(p)]
    else:
        found, fixed = [], next((i for i, part in enumerate(p.parts) if any(c in part for c in "*?[")), 0)
        for f in sorted(glob.glob(str(p), recursive=True)):
            if not Path(f).is_file():
                continue
            if any(is_hidden(part) for part in Path(f).parts[fixed:]):  # below the pattern's fixed folders
                left.add(HIDDEN, f)
            elif Path(f).suffix.lower() in readable_extensions():
                found.append(f)
            else:
                left.note_file(Path(f))
    left.say(f"source={source}")
    if not found:
        from trainer.errors import UserError

        raise UserError(
            f"source={source!r}: no images there. Give a folder of images, one image file, or a quoted "
            f"glob such as 'source=photos/*.jpg' ({', '.join(sorted(readable_extensions()))})."
        )
    return found


@torch.no_grad()
def forward(
    trained: Trained,
    x: torch.Tensor,
    device: torch.device,
    tta: str,
    runner: Any = None,
    temperature: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probabilities for a batch (softmax or sigmoid by task), averaged with the mirrored batch under
    tta=flip, of the logits divided by ``temperature`` when given. ``runner``: the runtime that computes
    the logits (trainer/use/runtimes.py; default torch)."""
    from trainer.loop.calibration import probabilities
    from trainer.loop.parts import with_tta
    from trainer.use.runtimes import TorchRunner

    runner = runner or TorchRunner(trained.model, device, channels_last(trained))
    task = task_named(trained.task)
    logits = with_tta(runner, tta, task.per_pixel)(x).float()
    return probabilities(logits, task, temperature)


def temperature_of(trained: Trained, calibration: str) -> torch.Tensor | None:
    """The temperature ``predict`` divides the logits by (``calibration=temperature``: the checkpoint's,
    if it has one), said once."""
    from trainer.errors import UserError
    from trainer.loop.calibration import stored_temperature

    if calibration not in ("temperature", "none"):
        raise UserError(
            f"calibration={calibration!r} is not valid: use temperature (the run's, kept in best.pt) or none."
        )
    temperature = stored_temperature(trained.state) if calibration == "temperature" else None
    if calibration == "temperature" and temperature is None and not task_named(trained.task).per_pixel:
        say(
            f"{trained.checkpoint.name} has no temperature (fit at the end of a finished run): probabilities as the network gives them"
        )
    elif temperature is not None:
        fit = trained.state["calibration"]
        values = ", ".join(f"{v:.3g}" for v in temperature.tolist()[:4]) + (" ..." if len(temperature) > 4 else "")
        say(
            f"probabilities calibrated: logits / temperature {values} (fit on the run's {fit.get('images', '?')} val "
            "images; calibration=none for the network's own)"
        )
    return temperature


def rows_for(trained: Trained, probs: torch.Tensor, topk: int, threshold: float) -> list[dict[str, Any]]:
    classes, task = trained.classes, task_named(trained.task)
    rows: list[dict[str, Any]] = []
    for p in probs:
        if task.one_output:
            positive = float(p.reshape(-1)[0])
            rows.append({"label": classes[1] if positive >= threshold else classes[0], "probability": positive})
        elif task.sigmoid:  # multilabel
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
    """tta, explain, topk, threshold and data.batch_size, checked (and calibration)."""
    from trainer.errors import UserError
    from trainer.loop.parts import TTA

    tta, explain = str(args["tta"]), str(args["explain"])
    if tta not in TTA:
        raise UserError(f"tta={tta!r} is not valid: use {' or '.join(TTA)}.")
    if str(args["calibration"]) not in ("temperature", "none"):
        calibration = args["calibration"]
        raise UserError(
            f"calibration={calibration!r} is not valid: use temperature (the run's, kept in best.pt) or none."
        )
    if explain not in ("none", "gradcam"):
        raise UserError(f"explain={explain!r} is not valid: use gradcam (a heatmap per image) or none.")
    try:
        topk, threshold, batch_size = int(args["topk"]), float(args["threshold"]), int(args["data.batch_size"])
    except ValueError as e:
        raise UserError(f"topk, threshold and data.batch_size take numbers ({e}).") from None
    if topk < 1 or batch_size < 1 or not 0 < threshold < 1:
        raise UserError("topk and data.batch_size must be >= 1 and threshold between 0 and 1.")
    return tta, explain, topk, threshold, batch_size


def say(line: str) -> None:
    """A line of the command's own report (stderr, above the progress bar: stdout ends with the summary line)."""
    import sys

    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


AUTO_FROM = 256  # runtime=auto exports for folders of at least this many images


class Runtimes:
    """The runner ``predict`` uses, prepared on the first batch (``runtime=auto`` times the candidates on it)."""

    def __init__(self, trained: Trained, device: torch.device, runtime: str, quantize: str, images: int) -> None:
        import tempfile

        from trainer.errors import UserError
        from trainer.use.runtimes import RUNTIMES, installed, require

        if runtime not in (*RUNTIMES, "auto"):
            raise UserError(f"runtime={runtime!r} is not valid: use auto, torch, onnx or openvino.")
        if quantize not in ("none", "int8"):
            raise UserError(f"quantize={quantize!r} is not valid: use int8 or none.")
        if quantize == "int8" and runtime == "torch":
            raise UserError("quantize=int8 runs in ONNX Runtime or OpenVINO: use runtime=onnx, openvino or auto.")
        if runtime == "auto":
            exported = [r for r in ("onnx", "openvino") if installed(r)] if device.type == "cpu" else []
            small = images < AUTO_FROM and quantize == "none"
            self.candidates = ["torch"] * (quantize == "none") + ([] if small else exported)
            if not self.candidates:
                raise UserError("quantize=int8 needs ONNX Runtime or OpenVINO: pip install 'transfer-trainer[export]'.")
        else:
            require(runtime)
            self.candidates = [runtime]
        self.trained, self.device, self.int8, self.auto = trained, device, quantize == "int8", runtime == "auto"
        self.folder = tempfile.TemporaryDirectory()
        self.runner: Any = None

    def prepare(self, name: str) -> Any:
        """The runner of ``name``: the export cached for this checkpoint (fp32: checked against torch again),
        or exported, checked and cached now (runtimes.cache_folder)."""
        import shutil

        from trainer.use import runtimes
        from trainer.use.export import check_runner, export_runner

        if name == "torch":
            return runtimes.TorchRunner(self.trained.model, self.device, channels_last(self.trained))
        start, cache = time.perf_counter(), runtimes.cache_folder(self.trained.checkpoint)
        stem = "model.int8" if self.int8 else "model"
        files = [f"{stem}.onnx"] if name == "onnx" else [f"{stem}.xml", f"{stem}.bin"]
        if all((cache / f).is_file() for f in files):
            runner = (runtimes.OnnxRunner if name == "onnx" else runtimes.OpenVinoRunner)(cache / files[0])
            if not self.int8:  # an int8 file was held to the agreement check when it was made
                check_runner(self.trained, runner, name, batch=2)
                self.trained.model.to(self.device)
            say(f"runtime={name}{' int8' if self.int8 else ''}: the export cached for this checkpoint ({cache})")
            return runner
        work = Path(self.folder.name) / name
        work.mkdir(parents=True, exist_ok=True)
        export_runner(self.trained, name, self.int8, work / files[0])
        self.trained.model.to(self.device)  # the checks ran it on the CPU
        cache.mkdir(parents=True, exist_ok=True)
        for f in files:  # each file whole or not at all: copied beside, then renamed
            part = cache / f".{f}.{os.getpid()}.tmp"
            shutil.copyfile(work / f, part)
            os.replace(part, cache / f)
        took = time.perf_counter() - start
        say(
            f"runtime={name}{' int8' if self.int8 else ''}: the model exported, checked and cached in {took:.1f}s ({cache})"
        )
        return (runtimes.OnnxRunner if name == "onnx" else runtimes.OpenVinoRunner)(cache / files[0])

    def first(self, x: torch.Tensor) -> Any:
        """The runner, made on the first batch. ``runtime=auto`` times the candidates once per checkpoint,
        precision and batch size and keeps the answer beside the cached exports (the next run loads only the winner)."""
        from trainer.use.runtimes import choose_fastest, read_choice, write_choice

        if self.runner is not None:
            return self.runner
        key = f"{'int8' if self.int8 else 'fp32'}-batch{x.shape[0]}-{self.device.type}"
        cache = None
        if len(self.candidates) > 1:
            from trainer.use.runtimes import cache_folder

            cache = cache_folder(self.trained.checkpoint)
            earlier = read_choice(cache, key, self.candidates)
            if earlier is not None:
                self.candidates = [earlier[0]]
                say(f"runtime=auto: {earlier[0]} (measured earlier for this checkpoint: {earlier[1]})")
        runners = [self.prepare(n) for n in self.candidates]
        if len(runners) > 1:
            self.runner, why = choose_fastest(runners, x)
            say(why)
            if cache is not None:
                write_choice(cache, key, self.runner.name, why.split("(", 1)[1].rstrip(")"))
        else:
            self.runner = runners[0]
        return self.runner

    def close(self) -> None:
        self.folder.cleanup()


def make_explainer(trained: Trained, layer: str, folder: Path) -> Any:
    """explain=gradcam: the Grad-CAM explainer of this model (trainer/use/explain.py)."""
    from trainer.use.explain import Explainer

    explainer = Explainer(trained.model, trained.task, int(trained.input_spec["size"]), layer or None)
    say(f"explain=gradcam: Grad-CAM of layer {explainer.layer_name} -> {folder}/")
    return explainer


class FolderImages(torch.utils.data.Dataset):
    """The images to predict, decoded and preprocessed in the loader's workers (while the model runs on the
    batch before): ``(path, tensor, (height, width))``, or ``(path, None, error)`` for a file that cannot be read."""

    def __init__(self, paths: list[str], transform: Any, exif: bool = True) -> None:
        self.paths, self.transform, self.exif = paths, transform, exif

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, Any, Any]:
        path = self.paths[index]
        try:
            image = decode_rgb(path, self.exif)
        except BadImage as e:
            return path, None, str(e)
        return path, self.transform(image), tuple(image.shape[-2:])


def batches_of(paths: list[str], transform: Any, batch_size: int, device: torch.device, exif: bool = True) -> Any:
    """Batches of ``FolderImages`` in file order, decoded by the loader's workers (data.num_workers=auto)."""
    from trainer.data.loaders import default_num_workers

    workers = min(default_num_workers(device.type == "cuda"), max(0, len(paths) // batch_size))
    return torch.utils.data.DataLoader(
        FolderImages(paths, transform, exif), batch_size=batch_size, num_workers=workers, collate_fn=list
    )


def write_predictions(out: Path, rows: list[dict[str, Any]], paths: list[str]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row if k != "error")) + ["error"]
    with atomic_file(out) as tmp, open(tmp, "w", newline="") as f:
        writer = SafeDictWriter(f, fieldnames=columns)
        writer.writeheader()
        order = {path: i for i, path in enumerate(paths)}  # unreadable files were recorded first in their batch
        writer.writerows(sorted(rows, key=lambda r: order[r["path"]]))


def predict(args: dict[str, Any]) -> tuple[Path, int, int]:
    """Run the command; returns the CSV written, the images predicted and those that could not be read."""
    from tqdm import tqdm

    from trainer.loop.devices import resolve_device

    tta, explain, topk, threshold, batch_size = checked_args(args)
    out = Path(str(args["out"])).expanduser()
    check_file(out, csv_with_header("path"), "a predictions CSV")
    trained = load_trained(str(args["checkpoint"]), trusted(args["allow_targets"]))
    temperature = temperature_of(trained, str(args["calibration"]))
    if tta == "flip" and not trained_with_flips(trained):
        say("warning: " + NOT_FLIPPED.format(augment=trained.config.data.get("augment")))
    device = resolve_device(str(args["trainer.device"]))
    trained.model.to(device)
    paths = find_images(str(args["source"]))
    masks, heatmaps = out.with_name(out.stem + "_masks"), out.with_name(out.stem + "_gradcam")
    transform = preprocess(trained)
    runners = Runtimes(trained, device, str(args["runtime"]), str(args["quantize"]), len(paths))
    explainer = make_explainer(trained, str(args["explain.layer"]), heatmaps) if explain == "gradcam" else None
    rows: list[dict[str, Any]] = []
    try:
        for items in tqdm(
            batches_of(paths, transform, batch_size, device, upright(trained)), desc="predict", unit="batch"
        ):
            rows += [{"path": path, "error": why} for path, x, why in items if x is None]
            good = [(path, x, size) for path, x, size in items if x is not None]
            if not good:
                continue
            batch, sizes = [path for path, _, _ in good], [size for _, _, size in good]
            x = torch.stack([x for _, x, _ in good])
            probs = forward(trained, x, device, tta, runners.first(x), temperature).cpu()
            per_pixel = task_named(trained.task).per_pixel
            labels = rows_for(trained, probs, topk, threshold) if not per_pixel else []
            if explainer is not None:
                written = explain_batch(explainer, x.to(device), probs, batch, heatmaps, trained.input_spec)
                rows += [{"path": p, **row, "gradcam": str(h)} for p, row, h in zip(batch, labels, written)]
            elif per_pixel:
                for path, p, size in zip(batch, probs, sizes):
                    mask = masks / (Path(path).stem + ".png")
                    save_mask(p, size, mask)
                    rows.append({"path": path, "mask": str(mask)})
            else:
                rows += [{"path": path, **row} for path, row in zip(batch, labels)]
    finally:
        runners.close()
    write_predictions(out, rows, paths)
    bad = sum(1 for r in rows if "error" in r)
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

"""The trainer on a folder of small PNGs against a bare loop, side by side, and where the time goes.

    python scripts/bench_png.py                       # 3,000 28x28 PNGs, efficientnet_lite0 at 64 px, bs 64
    python scripts/bench_png.py --quick               # a tiny model on 160 PNGs (seconds)
    python scripts/bench.py --modes png               # the same, from the main benchmark

The folder (train/ and val/, 10 classes of digit-like grayscale strokes, generated here) is read by
both sides from disk: the trainer through `data=imagefolder` with its defaults (per-sample seeded
flip_crop in its loader workers, uint8 batches normalized on the device, its progress bar and
logging), the bare loop through torchvision's ImageFolder with the same crop and flip in v2, the same
worker count, model (random init), optimizer kind, batch and size. Each round times, for each side:
the data alone (an epoch of batches, no model), a training epoch, and an evaluation pass; the trainer
also one checkpoint save. Rounds are interleaved and the median is printed, as ratios trainer / bare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build, sync  # noqa: E402


def make_pngs(root: Path, count: int, size: int, seed: int) -> None:
    """``count`` grayscale PNGs of ``size`` px in 10 class folders: a class-specific stroke pattern,
    randomly shifted and thickened, plus noise (learnable, not trivial)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        c = i % 10
        angle = c * np.pi / 10 + rng.normal(0, 0.08)
        cx, cy = 0.5 + rng.normal(0, 0.08, 2)
        d = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
        ring = np.abs(np.hypot(xx - cx, yy - cy) - 0.1 - 0.03 * c)
        stroke = np.exp(-((np.minimum(d, ring) / rng.uniform(0.03, 0.06)) ** 2))
        pixels = np.clip(stroke * 230 + rng.normal(0, 12, stroke.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(root / str(c) / f"{i:05d}.png")


def bare_side(root: Path, model_name: str, size: int, batch: int, workers: int, interpolation: Any) -> dict[str, Any]:
    """What a user writes by hand: ImageFolder + v2 transforms + DataLoader, a timm model, AdamW."""
    import timm
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    def to_rgb(img: Any) -> Any:
        return img.convert("RGB")

    train_tf = v2.Compose(
        [
            to_rgb,
            v2.PILToTensor(),
            v2.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interpolation, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )
    val_tf = v2.Compose([to_rgb, v2.PILToTensor(), v2.Resize(size, interpolation=interpolation, antialias=True)])
    loader = dict(batch_size=batch, num_workers=workers, persistent_workers=workers > 0)
    train = torch.utils.data.DataLoader(datasets.ImageFolder(root / "train", train_tf), shuffle=True, **loader)
    val = torch.utils.data.DataLoader(datasets.ImageFolder(root / "val", val_tf), **loader)
    model = timm.create_model(model_name, pretrained=False, num_classes=10)
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return {"train": train, "val": val, "model": model, "opt": opt, "norm": (mean, std)}


def bare_data(side: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    for x, _ in side["train"]:
        (x.float() - side["norm"][0]) / side["norm"][1]
    return time.perf_counter() - t0


def bare_epoch(side: dict[str, Any]) -> float:
    import torch

    model, opt, (mean, std) = side["model"], side["opt"], side["norm"]
    model.train()
    t0 = time.perf_counter()
    for x, y in side["train"]:
        loss = torch.nn.functional.cross_entropy(model((x.float() - mean) / std), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def bare_eval(side: dict[str, Any]) -> float:
    import torch

    model, (mean, std) = side["model"], side["norm"]
    model.eval()
    t0 = time.perf_counter()
    right = 0
    with torch.no_grad():
        for x, y in side["val"]:
            right += int((model((x.float() - mean) / std).argmax(1) == y).sum())
    return time.perf_counter() - t0


def trainer_data(run: Any) -> float:
    sync(run.device)
    t0 = time.perf_counter()
    for _ in run.inputs.train(1, 0):
        pass
    sync(run.device)
    return time.perf_counter() - t0


def trainer_epoch(run: Any) -> float:
    run.batches_per_epoch, run.state.batch_in_epoch = len(run.loaders.train), 0
    sync(run.device)
    t0 = time.perf_counter()
    run.train_one_epoch(0)
    sync(run.device)
    return time.perf_counter() - t0


def trainer_eval(run: Any) -> float:
    t0 = time.perf_counter()
    run.evaluate()
    sync(run.device)
    return time.perf_counter() - t0


def trainer_save(run: Any) -> float:
    t0 = time.perf_counter()
    run.save()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--count", type=int, default=3000, help="PNGs in all; a fifth go to val/")
    ap.add_argument("--png", type=int, default=28, help="the PNGs' side in px")
    ap.add_argument("--image", type=int, default=64, help="data.image_size (the trainer's auto picks 64 for 28 px)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", default="auto", help="data.num_workers; the bare loop uses the count it resolves to")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="tiny model, 160 PNGs, 2 rounds")
    args = ap.parse_args(argv)
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.model, args.count, args.image, args.batch, args.rounds = "test_resnet", 160, 32, 16, 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pngs"
        t0 = time.perf_counter()
        make_pngs(root / "train", args.count - args.count // 5, args.png, seed=0)
        make_pngs(root / "val", args.count // 5, args.png, seed=1)
        made = time.perf_counter() - t0
        run = build(
            [
                f"model.name={args.model}",
                "model.pretrained=false",
                "model.weights=null",
                "data=imagefolder",
                f"data.root={root}",
                f"data.image_size={args.image}",
                f"data.batch_size={args.batch}",
                f"data.num_workers={args.workers}",
                "+experiment=full",
                "trainer.epochs=1",
                "checkpoint.every_n_steps=0",
            ],
            f"{tmp}/run",
        )
        workers = run.loaders.train.num_workers
        from torchvision.transforms import InterpolationMode

        named = run.loaders.input_spec["interpolation"]
        interp = (
            InterpolationMode(named) if named in {m.value for m in InterpolationMode} else InterpolationMode.BILINEAR
        )
        bare = bare_side(root, args.model, args.image, args.batch, workers, interp)
        steps = {
            "data only (an epoch of batches)": (lambda: trainer_data(run), lambda: bare_data(bare)),
            "training epoch": (lambda: trainer_epoch(run), lambda: bare_epoch(bare)),
            "evaluation pass": (lambda: trainer_eval(run), lambda: bare_eval(bare)),
            "checkpoint save": (lambda: trainer_save(run), lambda: 0.0),
        }
        for trainer_fn, bare_fn in steps.values():  # warm-up: worker start, first-step costs
            trainer_fn(), bare_fn()
        times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in steps}
        for _ in range(args.rounds):
            for name, (trainer_fn, bare_fn) in steps.items():
                times[name][0].append(trainer_fn())
                times[name][1].append(bare_fn())
    med = {k: (statistics.median(a), statistics.median(b)) for k, (a, b) in times.items()}
    train_n = args.count - args.count // 5
    print(
        f"{args.count} PNGs of {args.png} px ({made:.0f} s to make), {args.model} at {args.image} px, batch "
        f"{args.batch}, {workers} loader worker(s), {torch.get_num_threads()} torch threads, median of "
        f"{args.rounds} interleaved rounds"
    )
    print("| step | trainer s | bare loop s | trainer / bare |\n|---|---|---|---|")
    for name, (a, b) in med.items():
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.3f} |" if b else f"| {name} | {a:.2f} | - | - |")
    epoch_ratio = (med["training epoch"][0] + med["evaluation pass"][0] + med["checkpoint save"][0]) / (
        med["training epoch"][1] + med["evaluation pass"][1]
    )
    print(f"ratio epoch (train + eval + save) trainer / bare: {epoch_ratio:.3f}")
    print(f"trainer img/s in training: {train_n / med['training epoch'][0]:.1f}")
    results = {"model": args.model, "image": args.image, "batch": args.batch, "workers": workers}
    results.update({"seconds": {k: list(v) for k, v in med.items()}, "ratio_epoch": epoch_ratio})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

"""The trainer's defaults against a bare expert loop on the same folder of images, side by side.

    python scripts/bench_recipe.py [--data digits|mnist5k|patches] [--epochs 2] [--out FILE]
    python scripts/bench_recipe.py --budgets 2m,5m [--data digits|mnist5k|patches] [--slow none,early,late]
    python scripts/bench_recipe.py --timm-train PATH/TO/pytorch-image-models/train.py [--data ...]

``--budgets``: instead, ``train data=<data> trainer.time_budget=B`` for each budget, and how close each
run's wall time (the whole command) lands to it. ``--slow``: each budget also with a pace that changes
on purpose: every optimizer step takes half as long again from 5% to 30% of the budget (``early``) or
from 55% to 80% (``late``), through the ``slow`` fault point (trainer/runs/failpoints.py).

The data set is written once as a folder of PNGs (DIR/train/<class>/, DIR/val/<class>/, the same
stratified split the trainer's own data options use). Then, one after the other on this machine:

1. a bare loop written here, as an expert would in forty lines: timm's EfficientNet-Lite0 with the
   packaged ImageNet weights, torchvision's ImageFolder, RandomResizedCrop(64, scale 0.7-1, ratio
   0.9-1.1) + flip, AdamW 2e-3 (weight decay 0.05) with OneCycle, batch 64, one loader worker, all
   layers every epoch, evaluated after each epoch;
2. ``train data=imagefolder data.root=DIR trainer.epochs=N`` (the defaults);
3. ``train data=imagefolder data.root=DIR trainer.time_budget=<the bare loop's wall time>``;
4. with ``--timm-train``: timm's own train.py (from a checkout of its repository; the wheel does not ship
   it) on the same folder, offline: the packaged weights written once as a timm state dict and given
   as ``--pretrained --pretrained-path``, and the bare loop's choices where train.py has them (64 px,
   AdamW 2e-3, weight decay 0.05, batch 64, scale 0.7-1, ratio 0.9-1.1, one worker, no label
   smoothing, cosine without warm-up; train.py has no OneCycle); its best top-1 is read from its log.

Each row's wall time is the whole command (start-up, data, training, evaluation); the table gives the
best val accuracy, the wall time and both as ratios to the bare loop.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("outputs/bench_recipe")


def write_folder(data: str) -> Path:
    """The data set as PNG files, once."""
    from PIL import Image

    from trainer.data.datasets import load_digits, load_mnist5k, load_photo_patches

    folder = ROOT / data / "images"
    if (folder / "done").is_file():
        return folder
    splits = {"digits": load_digits, "mnist5k": load_mnist5k, "patches": load_photo_patches}[data]()
    for split, images in (("train", splits.train), ("val", splits.val)):
        for i in range(len(images)):
            target = images.targets[i]
            out = folder / split / splits.classes[target]
            out.mkdir(parents=True, exist_ok=True)
            image = images.load(i)
            gray = bool((image == image[:1]).all())  # the digits: one channel repeated
            pixels = image[0].numpy() if gray else image.permute(1, 2, 0).numpy()
            Image.fromarray(pixels, mode="L" if gray else "RGB").save(out / f"{i:05d}.png")
    (folder / "done").write_text("")
    return folder


def bare_command(folder: Path, epochs: int) -> tuple[float, float]:
    """(best val accuracy, wall seconds) of the hand-written loop, run as its own process like `train`
    (its wall time includes the interpreter's start and the imports, as the trainer's does)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--bare", str(folder), "--epochs", str(epochs)], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the bare loop failed:\n{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["best"]), wall


def bare_loop(folder: Path, epochs: int) -> float:
    """Best val accuracy of the hand-written loop."""
    import timm
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from trainer.models.weights import load_weights

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", num_classes=10, drop_rate=0.2)
    load_weights(model, "package:efficientnet_lite0", {"classifier.weight", "classifier.bias"}, "efficientnet_lite0")
    cfg = timm.data.resolve_data_config(model=model)
    norm = transforms.Normalize(cfg["mean"], cfg["std"])
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(64, scale=(0.7, 1.0), ratio=(0.9, 1.1)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    val_tf = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor(), norm])
    train = DataLoader(datasets.ImageFolder(folder / "train", train_tf), 64, shuffle=True, num_workers=1)
    val = DataLoader(datasets.ImageFolder(folder / "val", val_tf), 128, num_workers=1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * len(train))
    loss_fn, best = torch.nn.CrossEntropyLoss(), 0.0
    for _ in range(epochs):
        model.train()
        for x, y in train:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        best = max(best, correct / total)
    return best


def trainer_run(
    folder: Path | None, name: str, extra: list[str], data: str = "", env: dict[str, str] | None = None
) -> tuple[float, float, dict]:
    """(best val accuracy, wall seconds, metrics.json) of one `train` command (``env``: variables added)."""
    import os

    run_dir = ROOT / (folder.parent.name if folder else data) / name
    on = ["data=imagefolder", f"data.root={folder}"] if folder else [f"data={data}"]
    args = [sys.executable, "-m", "trainer", *on, *extra]
    start = time.perf_counter()
    proc = subprocess.run(
        [*args, f"hydra.run.dir={run_dir}"], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return float(metrics["best"]), wall, metrics


def timm_weights() -> Path:
    """The packaged EfficientNet-Lite0 weights as a timm state dict (its ImageNet head included), once."""
    import timm
    import torch

    from trainer.models.weights import load_weights

    path = ROOT / "efficientnet_lite0_packaged.pth"
    if not path.is_file():
        model = timm.create_model("efficientnet_lite0", num_classes=1000, pretrained=False)
        load_weights(model, "package:efficientnet_lite0", set(), "efficientnet_lite0")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return path


def timm_train(script: Path, folder: Path, epochs: int) -> tuple[float, float]:
    """(best val accuracy, wall seconds) of timm's train.py on the folder, as its own process."""
    import re

    out = ROOT / folder.parent.name / f"timm-train-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    weights = timm_weights().resolve()
    args = [
        *("--data-dir", str(folder.resolve()), "--train-split", "train", "--val-split", "val"),
        *("--model", "efficientnet_lite0", "--pretrained", "--pretrained-path", str(weights)),
        *("--num-classes", str(len(list((folder / "train").iterdir()))), "--img-size", "64"),
        *("--epochs", str(epochs), "--opt", "adamw", "--lr", "2e-3", "--weight-decay", "0.05"),
        *("--sched", "cosine", "--warmup-epochs", "0", "-b", "64", "-j", "1", "--smoothing", "0"),
        *("--scale", "0.7", "1.0", "--ratio", "0.9", "1.1", "--device", "cpu", "--no-prefetcher"),
        *("--output", str(out.resolve())),
    ]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=script.parent)
    wall = time.perf_counter() - start
    found = re.search(r"\*\*\* Best metric: ([0-9.]+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 or found is None:
        sys.exit(f"timm's train.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return float(found.group(1)) / 100, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["digits", "mnist5k", "patches"], default="digits")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--budgets", default=None, help="e.g. 2m,5m: how close runs with these budgets land")
    ap.add_argument("--slow", default="none", help="with --budgets: none,early,late (a window of slower steps)")
    ap.add_argument("--timm-train", default=None, help="timm's train.py (in a checkout of its repository): add its row")
    ap.add_argument("--bare", default=None, help=argparse.SUPPRESS)  # the bare loop's own process, on this folder
    args = ap.parse_args()
    if args.bare:
        return print(json.dumps({"best": bare_loop(Path(args.bare), args.epochs)}))
    if args.budgets:
        return landing(args.data, args.budgets.split(","), args.out, args.slow.split(","))
    folder = write_folder(args.data)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    acc, wall = bare_command(folder, args.epochs)
    print(f"bare loop: {acc:.4f} in {wall:.0f} s", flush=True)
    rows = [(f"bare loop (timm + ImageFolder, AdamW + OneCycle, all layers, {args.epochs} epochs)", acc, wall, "")]
    a, w, m = trainer_run(folder, f"defaults-{stamp}", [f"trainer.epochs={args.epochs}"])
    rows.append((f"`train data=imagefolder data.root=DIR trainer.epochs={args.epochs}`", a, w, f"{m['epochs_done']}"))
    print(f"defaults: {a:.4f} in {w:.0f} s", flush=True)
    budget = f"{round(wall)}s"
    a, w, m = trainer_run(folder, f"budget-{stamp}", [f"trainer.time_budget={budget}"])
    rows.append((f"`train data=imagefolder data.root=DIR trainer.time_budget={budget}`", a, w, f"{m['epochs_done']}"))
    if args.timm_train:
        a, w = timm_train(Path(args.timm_train), folder, args.epochs)
        rows.append((f"timm's train.py (AdamW + cosine, all layers, {args.epochs} epochs)", a, w, ""))
        print(f"timm train.py: {a:.4f} in {w:.0f} s", flush=True)
    lines = [
        f"{args.data} as a folder of PNGs ({folder}), {time.strftime('%Y-%m-%d')}, one run each, one after the other:",
        "",
        "| what ran | epochs | best val acc | wall (s) | acc / bare | wall / bare |",
        "|---|---|---|---|---|---|",
    ]
    for label, a, w, epochs in rows:
        lines.append(f"| {label} | {epochs or args.epochs} | {a:.4f} | {w:.0f} | {a / acc:.3f} | {w / wall:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


SLOW = {"none": None, "early": (0.05, 0.30), "late": (0.55, 0.80)}  # shares of the budget with slower steps


def landing(data: str, budgets: list[str], out: str | None, slow: list[str]) -> None:
    import torch

    from trainer.config.values import parse_duration

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    lines = [
        f"`train data={data} trainer.time_budget=B`, {time.strftime('%Y-%m-%d')}, one run each:",
        "",
        "| budget | slower steps | epochs planned | planned again (after epoch: epochs) | epochs run | best val acc "
        "| wall (s) | wall / budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget, mode in [(b, m) for b in budgets for m in slow]:
        seconds = parse_duration(budget)
        assert seconds is not None
        window = SLOW[mode]
        env = {"TRAINER_FAILPOINT": f"slow:{window[0] * seconds:.0f}-{window[1] * seconds:.0f}"} if window else {}
        name = f"budget-{budget}-{mode}-{stamp}"
        acc, wall, m = trainer_run(None, name, [f"trainer.time_budget={budget}"], data, env)
        plan = torch.load(ROOT / data / name / "checkpoints" / "last.pt", weights_only=True)
        again = plan["budget"]["replanned"]
        first = again[0]["epochs"][0] if again else plan["budget"]["epochs"]
        changes = ", ".join(f"{c['after_epoch']}: {c['epochs'][1]} ({c['steps'][1]} steps)" for c in again) or "-"
        lines.append(
            f"| {budget} | {mode} | {first} | {changes} | {m['epochs_done']} | {acc:.4f} | {wall:.0f} | {wall / seconds:.3f} |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if out:
        Path(out).write_text(table + "\n")


if __name__ == "__main__":
    main()

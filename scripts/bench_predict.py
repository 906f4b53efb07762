"""`predict` with each runtime and precision on one folder of images, side by side, and timm's own
inference.py on the same folder and model.

    python scripts/bench_predict.py [--images 3000] [--batch 64] [--repeats 2] [--checkpoint RUN]
                                    [--timm-inference PATH/TO/pytorch-image-models/inference.py]

Without ``--checkpoint`` the built-in demo is trained first (2 epochs: EfficientNet-Lite0 fine-tuned on
the digits, 64 px). The folder holds ``--images`` PNGs (the digits, 64 x 64). Then, in turns (one
repetition of every row before the next, the median kept), each row runs as its own command:

- ``predict runtime=torch`` (eager PyTorch, fp32), ``runtime=onnx``, ``runtime=openvino``, each also
  with ``quantize=int8``, and ``runtime=auto``;
- with ``--timm-inference``: timm's inference.py (from its repository; the wheel does not ship it) on the
  same folder, the model loaded from our safetensors export with ``--model local-dir:DIR --pretrained``
  on the CPU.

Every command runs once untimed first, so the exports predict caches per checkpoint exist (the first
``runtime=onnx`` on a checkpoint also exports and checks: a few seconds more). Printed per row: the
command's wall time (start-up, loading and checking the cached export included) and its images per
second; the model's own pace (``model img/s``: preprocessed batches through the runtime, timed in this
process, best of 3 passes); both as ratios to torch eager; and the share of images whose top-1 label
equals torch eager's.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = [
    ("torch", "none"),
    ("onnx", "none"),
    ("openvino", "none"),
    ("onnx", "int8"),
    ("openvino", "int8"),
    ("auto", "none"),
]


def write_folder(root: Path, n: int) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = (digits.images[i % len(digits.images)] * 255 / 16).astype(np.uint8)
        Image.fromarray(img).resize((64, 64), Image.BICUBIC).convert("RGB").save(root / f"{i:05d}.png")


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return took


def top1(path: Path, column: str) -> dict[str, str]:
    return {Path(r.get("path") or r.get("filename")).name: r[column] for r in csv.DictReader(open(path))}


def model_pace(checkpoint: str, folder: Path, batch: int) -> dict[tuple[str, str], float]:
    """Images per second of the model alone in each runtime: the same preprocessed batches, best of 3."""
    import torch

    from trainer.data.images import decode_rgb
    from trainer.models.trained import load_trained
    from trainer.use import runtimes
    from trainer.use.export import export_runner
    from trainer.use.predict import preprocess

    trained = load_trained(checkpoint)
    transform = preprocess(trained)
    paths = sorted(folder.glob("*.png"))[: batch * 8]
    batches = [
        torch.stack([transform(decode_rgb(str(p))) for p in paths[i : i + batch]]) for i in range(0, len(paths), batch)
    ]
    pace = {}
    with tempfile.TemporaryDirectory() as tmp:
        for runtime, quantize in ROWS:
            if runtime == "auto":
                continue
            if runtime == "torch":
                runner = runtimes.TorchRunner(trained.model, torch.device("cpu"))
            else:
                name = f"{quantize}.onnx" if runtime == "onnx" else f"{quantize}.xml"
                runner = export_runner(trained, runtime, quantize == "int8", Path(tmp) / name)
            runner(batches[0])
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for x in batches:
                    runner(x)
                best = min(best, time.perf_counter() - start)
            pace[(runtime, quantize)] = sum(len(x) for x in batches) / best
    return pace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--timm-inference", default=None, help="timm's inference.py")
    parser.add_argument("--work", default="outputs/bench_predict")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = args.checkpoint
    if run is None:
        run = str(work / "run")
        if not (Path(run) / "checkpoints" / "best.pt").is_file():
            timed([sys.executable, "-m", "trainer", "trainer.epochs=2", f"hydra.run.dir={run}"], work)
    folder = work / "images"
    if len(list(folder.glob("*.png"))) != args.images:
        write_folder(folder, args.images)
    commands = {
        (r, q): [
            sys.executable,
            "-m",
            "trainer.use.predict",
            f"checkpoint={run}",
            f"source={folder}",
            f"out={work / f'{r}-{q}.csv'}",
            f"runtime={r}",
            f"quantize={q}",
            f"data.batch_size={args.batch}",
        ]
        for r, q in ROWS
    }
    if args.timm_inference:
        export = work / "export"
        timed(
            [sys.executable, "-m", "trainer.use.export", f"checkpoint={run}", "format=safetensors", f"out={export}"],
            work,
        )
        commands[("timm inference.py", "")] = [
            sys.executable,
            str(Path(args.timm_inference).resolve()),
            str(folder),
            "--model",
            f"local-dir:{export}",
            "--pretrained",
            "--device",
            "cpu",
            "-b",
            str(args.batch),
            "-j",
            "1",
            "--results-file",
            str(work / "timm.csv"),
            "--results-format",
            "csv",
            "--topk",
            "1",
            "--include-index",
            "--no-console-results",
        ]
    walls: dict[tuple[str, str], list[float]] = {k: [] for k in commands}
    for cmd in commands.values():  # once untimed: predict's exports are made and cached (the next runs load them)
        timed(cmd, work)
    for _ in range(args.repeats):
        for key, cmd in commands.items():
            walls[key].append(timed(cmd, work))
    pace = model_pace(run, folder, args.batch)
    reference = top1(work / "torch-none.csv", "label_1")
    base_wall = statistics.median(walls[("torch", "none")])
    base_pace = pace[("torch", "none")]
    print(f"\n{args.images} images of 64 px, batch {args.batch}, {run}; median of {args.repeats} runs each\n")
    print("| runtime | precision | predict wall | img/s | x torch | model img/s | x torch | top-1 = torch |")
    print("|---|---|---|---|---|---|---|---|")
    for (runtime, quantize), times in walls.items():
        wall = statistics.median(times)
        if runtime == "timm inference.py":
            labels = top1(work / "timm.csv", "index")
            from trainer.models.trained import load_trained

            names = load_trained(run).classes
            labels = {k: names[int(v)] for k, v in labels.items()}
        else:
            labels = top1(work / f"{runtime}-{quantize}.csv", "label_1")
        agree = sum(labels.get(k) == v for k, v in reference.items()) / len(reference)
        p = pace.get((runtime, quantize))
        model = f"{p:.0f} | {p / base_pace:.2f}" if p else "- | -"
        print(
            f"| {runtime} | {quantize or 'fp32'} | {wall:.1f} s | {args.images / wall:.0f} | {base_wall / wall:.2f} | {model} | {agree:.2%} |".replace(
                "| none |", "| fp32 |"
            )
        )


if __name__ == "__main__":
    main()

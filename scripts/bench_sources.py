"""The same images as a folder, as WebDataset shards and as an Arrow data set, read by index or streamed:
what reading them costs, on one process and on two under torchrun.

    python scripts/bench_sources.py [--images 50000] [--size 28] [--rounds 2] [--no-torchrun]

Generates ``--images`` small PNGs in 10 class folders (distinct images), writes them as shards with
`write-shards` (10 training shards) and as a Hugging Face data set (save_to_disk, the PNG bytes inside), then
for each source, in alternating order, ``--rounds`` times (medians):
  - build: composing the run's data (listing the folder, indexing the shards' headers, opening the set);
  - data only: one epoch of the training loader (decode, resize, augment, collate; the loader's workers);
  - training: one epoch of `train` with timm's tiny test_resnet (training images a second over the
    epoch's logged time, its val pass included);
  - torchrun: the same epoch with trainer.devices=2 (two processes, gloo, each its half of the images).
The streamed sources are the same shards read in order (data.streaming=true, through webdataset.gopen)
and the same Arrow set as an IterableDataset.
Nothing is asserted: the numbers are for docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

MODEL = ["model.name=test_resnet", "model.pretrained=false", "model.weights=null"]
COMMON = ["data.image_size=32", "data.batch_size=128", "seed=0"]


def _write(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image

    root, start, stop, size = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        c = i % 10
        a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        a[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4, c % 3] = 25 * c
        Image.fromarray(a).save(root / f"class{c}" / f"{i:06d}.png")


def make_folder(root: Path, n: int, size: int) -> None:
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    chunks = [(root, s, min(n, s + 2500), size) for s in range(0, n, 2500)]
    with Pool(2) as pool:
        pool.map(_write, chunks)


def make_arrow(shards: Path, out: Path) -> None:
    import datasets
    import webdataset

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"class{c}" for c in range(10)])}
    )

    def rows(split: str):  # noqa: ANN202
        for sample in webdataset.WebDataset(sorted(str(p) for p in shards.glob(f"{split}-*.tar")), shardshuffle=False):
            yield {"image": {"bytes": sample["png"], "path": None}, "label": int(sample["cls"])}

    parts = {
        name: datasets.Dataset.from_generator(rows, gen_kwargs={"split": split}, features=features)
        for name, split in (("train", "train"), ("validation", "val"))
    }
    datasets.DatasetDict(parts).save_to_disk(str(out), num_shards={"train": 10, "validation": 1})


def data_epoch(overrides: list[str]) -> tuple[float, float, int]:
    """(seconds to build the data, images a second over one training-loader epoch, images)."""
    code = f"""
import json, time
from trainer.config.schema import compose_config
from trainer.loop.build import setup_data, setup_model, setup_loaders
import torch
cfg = compose_config({overrides!r})
t0 = time.perf_counter(); splits = setup_data(cfg); built = time.perf_counter() - t0
loaders = setup_loaders(cfg, splits, setup_model(cfg, splits), torch.device("cpu"))
loaders.train.sampler.set_epoch(0) if hasattr(loaders.train, "sampler") and hasattr(loaders.train.sampler, "set_epoch") else None
t0 = time.perf_counter(); n = 0
for batch in loaders.train:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    n += sum(len(piece[0]) for piece in batch) if isinstance(batch, list) and batch and isinstance(batch[0], (list, tuple)) else len(x)
seconds = time.perf_counter() - t0
print(json.dumps([built, n / seconds, n]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))  # type: ignore[return-value]


def train_epoch(overrides: list[str], run_dir: Path) -> float:
    """Seconds of one epoch of `train` (its training and its val pass, as the run logs them)."""
    cmd = [sys.executable, "-m", "trainer", *overrides, *MODEL, "trainer.epochs=1", f"hydra.run.dir={run_dir}"]
    cmd += ["trainer.device=cpu"] if "trainer.devices=2" in overrides else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return float(json.loads((run_dir / "metrics.json").read_text())["history"][0]["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-torchrun", action="store_true", help="leave out the two-process epochs")
    args = ap.parse_args()
    root = Path("outputs/sources-bench") / time.strftime("%Y-%m-%d_%H-%M-%S")
    folder, shards, arrow = root / "folder", root / "shards", root / "arrow"
    t0 = time.perf_counter()
    make_folder(folder, args.images, args.size)
    print(f"folder: {args.images} PNGs in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.use.write_shards",
            "data=imagefolder",
            f"data.root={folder}",
            f"out={shards}",
            f"maxcount={max(1, args.images * 4 // 50)}",  # 10 training shards: 5 for each of 2 ranks
        ],
        check=True,
    )
    print(f"write-shards: {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    make_arrow(shards, arrow)
    print(f"arrow (save_to_disk): {time.perf_counter() - t0:.0f} s", flush=True)
    sources = {
        "folder": ["data=imagefolder", f"data.root={folder}"],
        "shards": ["data=webdataset", f"data.train={shards}/train-*.tar", f"data.val={shards}/val-*.tar"],
        "arrow": ["data=hf", f"data.path={arrow}"],
        "shards, streamed": [
            "data=webdataset",
            f"data.train={shards}/train-*.tar",
            f"data.val={shards}/val-*.tar",
            "data.streaming=true",
        ],
        "arrow, streamed": ["data=hf", f"data.path={arrow}", "data.streaming=true"],
    }
    results: dict[str, list[tuple[float, ...]]] = {k: [] for k in sources}
    for r in range(args.rounds):
        for name in sources if r % 2 == 0 else reversed(list(sources)):
            built, rate, n = data_epoch([*sources[name], *COMMON, *MODEL])
            seconds = train_epoch([*sources[name], *COMMON], root / f"run-{name}-{r}".replace(", ", "-"))
            row = [built, rate, n / seconds]
            if not args.no_torchrun:
                two = train_epoch(
                    [*sources[name], *COMMON, "trainer.devices=2"], root / f"ddp-{name}-{r}".replace(", ", "-")
                )
                row.append(n / two)
            results[name].append(tuple(row))
            print(f"{name} round {r}: build {built:.1f} s, data {rate:.0f} img/s, training {row[2:]} img/s", flush=True)
    lines = [
        f"| source ({args.images} PNGs, {args.size} px) | build the data (s) | data only (img/s) | training, test_resnet (img/s) | torchrun, 2 processes (img/s) |",
        "|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        med = [statistics.median(col) for col in zip(*rows)]
        two = f"{med[3]:.0f}" if len(med) > 3 else "-"
        lines.append(f"| {name} | {med[0]:.1f} | {med[1]:.0f} | {med[2]:.0f} | {two} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

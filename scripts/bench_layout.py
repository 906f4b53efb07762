"""channels_last against the default (NCHW) layout, per model family, through the trainer's own loop.

    python scripts/bench_layout.py                       # the families below, bs 128, 224 px
    python scripts/bench_layout.py --models resnet50,convnext_tiny --batch 64

Each model is built twice (``trainer.channels_last=true`` and ``false``), fed the same uint8 batches
already on the device, and timed in interleaved rounds (median; warm-up excluded). The last column
is what ``trainer.channels_last=auto`` picks for that model, so a row where auto picks the slower
layout shows up at once.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import DeviceLoader, build, synthetic_overrides, time_trainer  # noqa: E402

FAMILIES = (
    "resnet50,resnext50_32x4d,regnety_016,efficientnet_b0,mobilenetv3_large_100,convnext_tiny,"
    "densenet121,vit_small_patch16_224"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=FAMILIES)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    from trainer.models.backbones import is_convnet

    cuda = torch.cuda.is_available()
    rows: list[dict[str, Any]] = []
    print(
        f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, batch {args.batch}, {args.image}px, "
        f"precision {args.precision}, median of {args.rounds} interleaved rounds of {args.steps} steps"
    )
    print("| model | NCHW img/s | channels_last img/s | channels_last / NCHW | auto picks |\n|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for name in args.models.split(","):
        common = synthetic_overrides(name, args.image, args.batch, args.precision)
        with tempfile.TemporaryDirectory() as tmp:
            runs = {cl: build(common + [f"trainer.channels_last={cl}"], f"{tmp}/{cl}") for cl in ("false", "true")}
            dev = runs["false"].device
            x = torch.randint(0, 256, (args.batch, 3, args.image, args.image), dtype=torch.uint8, generator=g).to(dev)
            y = torch.randint(0, 2, (args.batch,), generator=g).to(dev)
            for run in runs.values():
                run.loaders.train = DeviceLoader(x, y, args.steps)
                time_trainer(run, 0)  # warm-up: cudnn autotuning, allocator
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.rounds):
                for cl, run in runs.items():
                    t, _, n = time_trainer(run, 1)
                    times[cl].append(t / n)
            ips = {cl: args.batch / statistics.median(ts) for cl, ts in times.items()}
            auto = "channels_last" if (cuda and is_convnet(runs["false"].model)) else "NCHW"
            row = {
                "model": name,
                "nchw_img_s": ips["false"],
                "channels_last_img_s": ips["true"],
                "ratio": ips["true"] / ips["false"],
                "auto": auto,
            }
            rows.append(row)
            print(f"| {name} | {ips['false']:,.0f} | {ips['true']:,.0f} | {row['ratio']:.3f} | {auto} |", flush=True)
            del runs, x, y
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

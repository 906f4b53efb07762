"""Resampling for ``data.decode=device``: the whole batch in a few matrix products
(``resample_batch``) against v2's kernels image by image, on the same decoded JPEGs.

    python scripts/bench_resample.py                    # CUDA if there is one, else the CPU
    python scripts/bench_resample.py --batch 256 --rounds 7

JPEGs of about 500x375 are made in a temporary folder, decoded once on the device (nvjpeg on a
GPU, whose time is printed too), and each batch is cropped, resized to 224 px (bicubic,
antialiased), and flipped as a training batch would be, or resized and center cropped as an
evaluation batch. The two ways are timed in interleaved rounds (median), and their pixels compared:
on a GPU v2 resizes in float32 as the batched path does; on a CPU v2 has a fixed-point uint8 kernel,
so a level apart is expected there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import make_jpegs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    import torch
    from torchvision.transforms import v2

    from trainer.data.images import decode_jpegs
    from trainer.data.resample import DeviceGeometry, apply_geometry, plan_resample, resample_batch

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    batch = args.batch or (256 if device.type == "cuda" else 32)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):
        fn()  # warm-up
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return (time.perf_counter() - t0) * 1000, out

    with tempfile.TemporaryDirectory() as tmp:
        make_jpegs(Path(tmp), batch, (500, 375))
        data = [
            torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in sorted(Path(tmp).rglob("*.jpg"))
        ]
    decode_ms, images = timed(lambda: decode_jpegs(data, device))
    print(f"device {device}, batch {batch}; decode: {decode_ms:.1f} ms ({batch / decode_ms * 1000:,.0f} img/s)")
    interp = v2.InterpolationMode.BICUBIC
    pipelines = {
        "train": v2.Compose([v2.RandomResizedCrop(args.size, interpolation=interp), v2.RandomHorizontalFlip()]),
        "eval": v2.Compose([v2.Resize(round(args.size / 0.875), interpolation=interp), v2.CenterCrop(args.size)]),
    }
    print(
        f"{'batch':<6} {'per image ms':>12} {'batched ms':>11} {'per image / batched':>20} {'max diff':>9} {'differing':>10}"
    )
    for name, pipeline in pipelines.items():
        geometry = DeviceGeometry(pipeline)
        torch.manual_seed(0)
        ops = [geometry.plan(*img.shape[1:]) for img in images]
        per_image, batched = [], []
        for _ in range(args.rounds):  # interleaved: both see the same machine state
            ms, want = timed(lambda: torch.stack([apply_geometry(img, o) for img, o in zip(images, ops)]))
            per_image.append(ms)
            ms, got = timed(
                lambda: resample_batch(images, [plan_resample(o, *img.shape[1:]) for img, o in zip(images, ops)])
            )
            batched.append(ms)
        a, b = statistics.median(per_image), statistics.median(batched)
        diff = (got.int() - want.int()).abs()
        print(
            f"{name:<6} {a:>12.1f} {b:>11.1f} {a / b:>20.2f} {diff.max().item():>9} {(diff > 0).float().mean().item():>10.2%}"
        )


if __name__ == "__main__":
    main()

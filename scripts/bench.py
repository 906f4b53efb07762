"""Throughput of the trainer against a bare PyTorch loop, measured side by side.

    python scripts/bench.py                                   # resnet50, bs 256 (GPU) / 32 (CPU), all modes
    python scripts/bench.py --model resnet18 --batch 64 --modes synthetic,frozen
    python scripts/bench.py --quick                           # a tiny model in seconds (CI smoke run)

Modes (each trainer row is timed against the bare loop of the same model, batch, precision and
memory format, in interleaved rounds, median of --rounds; warm-up steps and compile time excluded):

- ``synthetic``: uint8 batches already on the device, through the trainer's loop (normalize on the
  device, autocast, optimizer step, schedule) and through a bare loop doing the same arithmetic.
- ``jpeg``: real JPEG files (generated here, 500x375, an ImageFolder) decoded by the trainer's
  loaders with their workers: the ratio to ``synthetic`` is what the input pipeline costs, and the
  data wait is the share of step time spent waiting for the next batch.
- ``frozen``: the backbone frozen (a linear probe), against the trainer's own full fine-tuning.
- ``compile``: the trainer's synthetic row with ``trainer.compile=true`` (compile time reported apart).
- ``png``: a folder of small PNGs (28 px, generated) through the trainer's loaders and a bare
  ImageFolder loop, with where the time goes (data, training, evaluation, saving): see bench_png.py.
- ``bf16``: the trainer's synthetic row again with ``trainer.precision=bf16`` (autocast; on a CPU
  that has bf16 instructions too), against the same row in fp32 (run with ``--precision fp32``).

Also: ``train --help`` wall time, and time to the first optimizer step of ``train`` against a bare
script that does the same imports, model build and one step. On CUDA: peak memory, and the
achieved FLOP/s as a share of a bf16 matmul rate measured in the same process (MFU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONF = str(REPO / "conf")


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_jpeg_chunk(args: tuple[str, range, tuple[int, int]]) -> None:
    import numpy as np
    from PIL import Image

    root, indices, (w, h) = Path(args[0]), args[1], args[2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in indices:
        rng = np.random.default_rng(i)
        cls = f"class{i % 2}"
        fx, fy, ph = rng.uniform(0.005, 0.03, 2).tolist() + [rng.uniform(0, 6.28)]
        base = np.stack([np.sin(xx * fx + ph), np.cos(yy * fy + ph), np.sin((xx + yy) * 0.01 + i)], -1)
        img = ((base * 0.4 + 0.5 + rng.normal(0, 0.06, (h, w, 3))) * 255).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / cls / f"{i:05d}.jpg", quality=90)


def make_jpegs(root: Path, count: int, size: tuple[int, int]) -> None:
    """Photo-like JPEGs (smooth colour fields + noise, 2 classes) at quality 90, made on all cores."""
    from concurrent.futures import ProcessPoolExecutor

    for c in range(2):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    procs = max(1, min(16, os.cpu_count() or 1))
    chunks = [(str(root), range(k, count, procs), size) for k in range(procs)]
    if procs == 1 or count < 64:
        for chunk in chunks:
            _make_jpeg_chunk(chunk)
        return
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(_make_jpeg_chunk, chunks))


def synthetic_overrides(model: str, image: int, batch: int, precision: str) -> list[str]:
    """A run of ``model`` (random weights) on generated data, built for timing: one full-network
    stage, no schedule, no logging or checkpoints inside the timed epochs."""
    return [
        f"model.name={model}",
        "model.pretrained=false",
        "model.weights=null",
        "data=fake",
        f"data.image_size={image}",
        f"data.batch_size={batch}",
        "data.augment=none",
        "finetune.cache_features=false",  # the frozen mode times the backbone's forward each step
        f"trainer.precision={precision}",
        "trainer.log_every=1000000",
        "checkpoint.every_n_steps=0",
        "+experiment=full",
        "scheduler=none",
        f"data.dataset.image_size={image}",
        f"data.dataset.train_size={batch * 2}",
        "data.dataset.val_size=8",
        "data.dataset.num_classes=2",
    ]


def build(overrides: list[str], run_dir: str) -> Any:
    from hydra import compose, initialize_config_dir

    from trainer.loop.build import build_run

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return build_run(compose("train", overrides=overrides), run_dir=run_dir)


class DeviceLoader:
    """Synthetic uint8 batches that already live on the device (no input pipeline at all)."""

    def __init__(self, x: Any, y: Any, steps: int) -> None:
        self.x, self.y, self.steps = x, y, steps
        self.batch_size, self.drop_last = x.shape[0], True
        self.dataset = range(x.shape[0] * steps)  # the images it serves, as a sized stand-in

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Any:
        for _ in range(self.steps):
            yield self.x, self.y, []


def time_trainer(run: Any, epoch: int) -> tuple[float, float, int]:
    """One epoch of the trainer's own loop: (seconds, seconds waiting for the next batch, batches)."""
    from trainer.data.device import DeviceBatches

    waited, count = [0.0], [0]
    original = DeviceBatches.__iter__

    def timed_iter(self: Any) -> Any:
        it = original(self)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            waited[0] += time.perf_counter() - t0
            count[0] += 1
            yield batch

    run.batches_per_epoch = len(run.loaders.train)
    run.state.batch_in_epoch = 0
    DeviceBatches.__iter__ = timed_iter
    try:
        sync(run.device)
        t0 = time.perf_counter()
        run.train_one_epoch(epoch)
        sync(run.device)
        return time.perf_counter() - t0, waited[0], count[0]
    finally:
        DeviceBatches.__iter__ = original


def bare_step_fn(run: Any, x: Any, y: Any) -> Callable[[int], float]:
    """The same model (a copy), optimizer kind, precision, memory format and normalization, no trainer."""
    import copy

    import torch

    model = copy.deepcopy(run.model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = type(run.optimizer)(
        params,
        lr=1e-4,
        **(
            {"fused": True}
            if run.device.type == "cuda" and type(run.optimizer) in (torch.optim.AdamW, torch.optim.Adam)
            else {}
        ),
    )
    spec = run.loaders.input_spec
    std = torch.tensor(spec["std"], device=run.device).view(1, -1, 1, 1)
    scale, shift = 1.0 / (255.0 * std), (-torch.tensor(spec["mean"], device=run.device).view(1, -1, 1, 1) / std)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.settings.precision)

    def steps(n: int) -> float:
        sync(run.device)
        t0 = time.perf_counter()
        for _ in range(n):
            xf = torch.addcmul(shift, x.float(), scale).contiguous(memory_format=run.memory_format)
            with torch.autocast(run.device.type, dtype=amp, enabled=amp is not None):
                loss = torch.nn.functional.cross_entropy(model(xf).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(run.device)
        return time.perf_counter() - t0

    return steps


def flops_per_image(run: Any, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, size, size, device=run.device)
    with FlopCounterMode(display=False) as counter:
        run.model(x).float().sum().backward()
    run.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def matmul_rate(device: Any) -> float:
    """bf16 matmul FLOP/s this device reaches now (the MFU denominator)."""
    import torch

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - t0


def startup(model_args: list[str], bare_model: str, image: int, rounds: int) -> dict[str, float]:
    """`train --help`, and time to the first optimizer step: `train` (stopped there by a fault point)
    vs a bare script with the same imports, model build and one step."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1")
    bare = (
        "import torch, torchvision, timm\n"
        "dev = 'cuda' if torch.cuda.is_available() else 'cpu'\n"
        "torch.backends.cudnn.benchmark = True\n"
        f"m = timm.create_model({bare_model!r}, num_classes=2).to(dev)\n"
        "m = m.to(memory_format=torch.channels_last) if dev == 'cuda' else m\n"
        f"opt = torch.optim.AdamW(m.parameters())\nx = torch.randn(8, 3, {image}, {image}, device=dev)\n"
        "with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == 'cuda'):\n"
        "    loss = torch.nn.functional.cross_entropy(m(x).float(), torch.zeros(8, dtype=torch.long, device=dev))\n"
        "loss.backward()\nopt.step()\n"
        "torch.cuda.synchronize() if dev == 'cuda' else None\n"
    )
    train = [
        sys.executable,
        "-m",
        "trainer",
        *model_args,
        "data=fake",
        f"data.image_size={image}",
        "data.batch_size=8",
        "finetune.head_epochs=0",
        "hydra.run.dir=" + tempfile.mkdtemp(),
    ]
    helps, firsts, bares = [], [], []
    for _ in range(rounds):
        helps.append(wall([sys.executable, "-m", "trainer", "--help"], env))
        firsts.append(wall(train, dict(env, TRAINER_FAILPOINT="step:1")))
        bares.append(wall([sys.executable, "-c", bare], env))
    return {
        "help_s": statistics.median(helps),
        "first_step_s": statistics.median(firsts),
        "bare_first_step_s": statistics.median(bares),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--channels-last", default="auto")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per timed round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--modes", default="synthetic,jpeg,frozen")
    ap.add_argument("--jpeg-count", type=int, default=None, help="default: enough for steps x batch")
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--decode", default="workers", help="data.decode for the JPEG rows: workers or device")
    ap.add_argument("--no-startup", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="tiny model, small images, 2 rounds (seconds)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.quick:
        args.model, args.image, args.batch, args.steps, args.warmup, args.rounds = "test_resnet", 64, 8, 4, 1, 2
        args.jpeg_count = 32
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    batch = args.batch or (256 if device_type == "cuda" else 32)
    modes = [m for m in args.modes.split(",") if m]
    if "png" in modes:
        import bench_png

        bench_png.main(["--quick"] if args.quick else [])
        modes.remove("png")
        if not modes:
            return
    common = synthetic_overrides(args.model, args.image, batch, args.precision) + [
        f"trainer.channels_last={args.channels_last}"
    ]
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device_type == "cuda" else "cpu",
        "model": args.model,
        "batch": batch,
        "image": args.image,
    }
    rows: list[tuple[str, float, float, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        full = build(common, f"{tmp}/full")
        results["precision"], results["channels_last"] = full.settings.precision, full.settings.channels_last
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (batch, 3, args.image, args.image), dtype=torch.uint8, generator=g).to(full.device)
        y = torch.randint(0, 2, (batch,), generator=g).to(full.device)
        full.loaders.train = DeviceLoader(x, y, args.steps)
        bare = bare_step_fn(full, x, y)
        variants: dict[str, Callable[[], tuple[float, float, int]]] = {}
        if "synthetic" in modes or "jpeg" in modes:
            variants["trainer, synthetic"] = lambda: time_trainer(full, 1)
            variants["bare loop, synthetic"] = lambda: (bare(args.steps), 0.0, args.steps)
        if "bf16" in modes:
            half = build(
                [o for o in common if not o.startswith("trainer.precision")] + ["trainer.precision=bf16"], f"{tmp}/bf16"
            )
            half.loaders.train = DeviceLoader(x, y, args.steps)
            variants["trainer, synthetic, bf16"] = lambda: time_trainer(half, 1)
        if "compile" in modes:
            comp = build(common + ["trainer.compile=true"], f"{tmp}/compile")
            comp.loaders.train = DeviceLoader(x, y, args.steps)
            variants["trainer, synthetic, compiled"] = lambda: time_trainer(comp, 1)
        if "frozen" in modes:
            frozen = build(common + ["model.freeze=backbone"], f"{tmp}/frozen")
            frozen.loaders.train = DeviceLoader(x, y, args.steps)
            variants["trainer, frozen backbone"] = lambda: time_trainer(frozen, 1)
        if "jpeg" in modes:
            count = args.jpeg_count or int(batch * args.steps / 0.95) + batch
            folder = Path(tmp) / "jpeg"
            t0 = time.perf_counter()
            make_jpegs(folder, count, (500, 375) if not args.quick else (160, 120))
            results["jpeg_files"], results["jpeg_make_s"] = count, round(time.perf_counter() - t0, 1)
            jpeg_args = [o for o in common if not o.startswith("data.")] + [
                "data=imagefolder",
                f"data.root={folder}",
                f"data.image_size={args.image}",
                f"data.batch_size={batch}",
                "data.augment=flip_crop",
                f"data.num_workers={args.workers}",
                "data.val_split=0.05",
                f"data.decode={args.decode}",
            ]
            jpeg = build(jpeg_args, f"{tmp}/jpeg")
            results["jpeg_workers"], results["jpeg_decode"] = jpeg.loaders.train.num_workers, args.decode
            results["jpeg_pieces_per_batch"] = getattr(jpeg.loaders.train, "pieces", 1)
            variants["trainer, JPEG files"] = lambda: time_trainer(jpeg, 1)
            if "compile" in modes:
                jpeg_comp = build(jpeg_args + ["trainer.compile=true"], f"{tmp}/jpeg_compile")
                variants["trainer, JPEG files, compiled"] = lambda: time_trainer(jpeg_comp, 1)
        # warm-up (cudnn autotuning, allocator, first-step costs), not timed
        warm: dict[str, Any] = {
            "trainer, synthetic": full,
            "trainer, frozen backbone": locals().get("frozen"),
            "trainer, JPEG files": locals().get("jpeg"),
            "trainer, synthetic, bf16": locals().get("half"),
            "trainer, synthetic, compiled": locals().get("comp"),
            "trainer, JPEG files, compiled": locals().get("jpeg_comp"),
        }
        for name in variants:
            t0 = time.perf_counter()
            if name.startswith("bare"):
                bare(args.warmup)
            elif warm.get(name) is not None:
                time_trainer(warm[name], 0)
            if name == "trainer, synthetic, compiled":  # the first epoch compiles: reported, not timed
                results["compile_s"] = round(time.perf_counter() - t0, 1)
        if device_type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times: dict[str, list[tuple[float, float, int]]] = {k: [] for k in variants}
        for _ in range(args.rounds):  # interleaved: a noisy machine slows every variant alike
            for name, fn in variants.items():
                times[name].append(fn())
        for name, ts in times.items():
            per_step = statistics.median(t / n for t, _, n in ts)
            waits = statistics.median(w / t for t, w, _ in ts)
            rows.append((name, batch / per_step, 1000 * per_step, waits, ""))
        if device_type == "cuda":
            results["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            rate = matmul_rate(full.device)
            fpi = flops_per_image(full, args.image)
            results["bf16_matmul_tflops"] = round(rate / 1e12, 1)
            results["mfu"] = {name: round(ips * fpi / rate, 4) for name, ips, *_ in rows}
        else:
            import resource

            results["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    by_name = {r[0]: r for r in rows}
    print(
        f"device {results['device']}, model {args.model}, batch {batch}, {args.image}px, precision "
        f"{results['precision']}, channels_last {results['channels_last']}, median of {args.rounds} interleaved rounds"
    )
    print("| variant | img/s | step ms | data wait | vs bare loop | MFU |\n|---|---|---|---|---|---|")
    bare_ips = by_name.get("bare loop, synthetic", (None, None))[1]
    for name, ips, ms, wait, _ in rows:
        ratio = f"{ips / bare_ips:.3f}" if bare_ips and not name.startswith("bare") else "-"
        mfu = f"{results['mfu'][name]:.1%}" if "mfu" in results else "n/a"
        print(f"| {name} | {ips:,.1f} | {ms:.1f} | {wait:.1%} | {ratio} | {mfu} |")
    ratios = {}
    if bare_ips and "trainer, synthetic" in by_name:
        ratios["trainer / bare (synthetic)"] = by_name["trainer, synthetic"][1] / bare_ips
    if "trainer, JPEG files" in by_name and "trainer, synthetic" in by_name:
        ratios["JPEG / synthetic"] = by_name["trainer, JPEG files"][1] / by_name["trainer, synthetic"][1]
    if "trainer, synthetic, bf16" in by_name and "trainer, synthetic" in by_name:
        ratios[f"bf16 / {results['precision']} (img/s)"] = (
            by_name["trainer, synthetic, bf16"][1] / by_name["trainer, synthetic"][1]
        )
    if "trainer, synthetic, compiled" in by_name and "trainer, synthetic" in by_name:
        ratios["compiled / eager (img/s)"] = (
            by_name["trainer, synthetic, compiled"][1] / by_name["trainer, synthetic"][1]
        )
    if "trainer, JPEG files, compiled" in by_name and "trainer, synthetic, compiled" in by_name:
        ratios["JPEG / synthetic, compiled"] = (
            by_name["trainer, JPEG files, compiled"][1] / by_name["trainer, synthetic, compiled"][1]
        )
    if "trainer, frozen backbone" in by_name and "trainer, synthetic" in by_name:
        ratios["frozen / full (time per image)"] = (
            by_name["trainer, synthetic"][1] / by_name["trainer, frozen backbone"][1]
        )
    if not args.no_startup:
        model_args = [f"model.name={args.model}", "model.pretrained=false", "model.weights=null"]
        rounds = 1 if args.quick else max(1, min(args.rounds, 3))  # quick: each round is three fresh processes
        s = startup(model_args, args.model, min(args.image, 64), rounds)
        results.update(s)
        ratios["first step: train / bare script"] = s["first_step_s"] / s["bare_first_step_s"]
        print(
            f"train --help: {s['help_s']:.2f} s; time to first step: train {s['first_step_s']:.2f} s, "
            f"bare script {s['bare_first_step_s']:.2f} s"
        )
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.3f}")
    for k in (
        "peak_memory_gib",
        "peak_rss_gib",
        "bf16_matmul_tflops",
        "compile_s",
        "jpeg_make_s",
        "jpeg_workers",
        "jpeg_pieces_per_batch",
        "jpeg_decode",
    ):
        if k in results:
            print(f"{k}: {results[k]}")
    results["rows"] = [{"variant": n, "img_s": i, "step_ms": m, "data_wait": w} for n, i, m, w, _ in rows]
    results["ratios"] = ratios
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

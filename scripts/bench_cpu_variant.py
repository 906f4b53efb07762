"""On a CPU: which precision and memory layout trains each model fastest, and what `train`'s choice
(`trainer.precision=auto`, `trainer.channels_last=auto`, loop/variant.py) gains on whole runs.

    python scripts/bench_cpu_variant.py steps  [--models efficientnet_lite0,resnet18] [--image 64] [--batch 32]
    python scripts/bench_cpu_variant.py runs   [--data digits,mnist5k,patches] [--epochs 2] [--rounds 2]
    python scripts/bench_cpu_variant.py scoring [--models efficientnet_lite0,resnet18] [--image 64] [--batch 128]

`steps`: one training step of each model (random weights) in each variant, timed the way the run's
probe times it (median of 3 after a warm-up), in interleaved rounds; the fastest, what the probe picks
and what the rule for short runs picks. `runs`: `train data=SET trainer.epochs=N` with the choice
before this change (bf16 NCHW on a CPU with native bf16: `trainer.precision=bf16
trainer.channels_last=false`) and with today's `auto`, side by side in alternating order, repeated;
wall time (whole command), training time, best val accuracy, and the ratio. `scoring`: the forward
pass alone (eval mode, no gradients: what the val pass, `evaluate` and `predict` run) of each model in
each variant, median of 5 after a warm-up, in interleaved rounds, with the largest logit difference
from fp32 NCHW and the share of top-1 labels that stay the same. Nothing is asserted: the numbers are
for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from transfer_table import run_train  # scripts/ is on the path when a script runs


def steps(args: argparse.Namespace) -> None:
    import timm
    import torch

    from trainer.loop import variant as variants

    print(
        f"| model | params | {' | '.join(['fp32 NCHW', 'fp32 channels_last', 'bf16 NCHW', 'bf16 channels_last'])} | fastest | rule |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        size = {"img_size": args.image} if "vit" in name else {}
        model = timm.create_model(name, pretrained=False, num_classes=10, **size)
        options = variants.candidates("auto", "auto", model)
        x = torch.randn(args.batch, 3, args.image, args.image)
        y = torch.randint(0, 10, (args.batch,))
        loss_fn = torch.nn.CrossEntropyLoss()
        times: dict[str, list[float]] = {str(v): [] for v in options}
        for _ in range(args.rounds):
            for v in options:
                times[str(v)].append(variants.time_step(model, loss_fn, lambda: (x, y), v))
        median = {k: statistics.median(t) for k, t in times.items()}
        fastest = min(median, key=median.__getitem__)
        rule = str(variants.rule(options, model))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        cells = [
            f"{median[k]:.3f} s" if k in median else "-"
            for k in ("fp32 NCHW", "fp32 channels_last", "bf16 NCHW", "bf16 channels_last")
        ]
        print(
            f"| {name} | {params:.1f}M | {' | '.join(cells)} | {fastest} | {rule} ({median[rule] / median[fastest]:.2f}x the fastest) |"
        )
        sys.stdout.flush()


def runs(args: argparse.Namespace) -> None:
    root = Path("outputs/cpu_variant") / time.strftime("%Y-%m-%d_%H-%M-%S")
    before = ["trainer.precision=bf16", "trainer.channels_last=false"]
    print("| data | epochs | choice | wall (s) | train (s) | best val acc | wall ratio (before / auto) |")
    print("|---|---|---|---|---|---|---|")
    for data in args.data.split(","):
        found: dict[str, list[tuple[float, float, float]]] = {"before": [], "auto": []}
        for r in range(args.rounds):
            order = [("before", before), ("auto", [])] if r % 2 == 0 else [("auto", []), ("before", before)]
            for name, extra in order:
                run_dir = root / f"{data}-{name}-{r}"
                cmd = [sys.executable, "-m", "trainer", f"data={data}", f"trainer.epochs={args.epochs}", *extra]
                metrics, wall = run_train([*cmd, f"hydra.run.dir={run_dir}"], run_dir, f"{data} {name}")
                found[name].append((wall, float(metrics["train_time_s"]), float(metrics["best"])))
        med = {k: [statistics.median(c) for c in zip(*v)] for k, v in found.items()}
        ratio = med["before"][0] / med["auto"][0]
        for name in ("before", "auto"):
            wall, train, acc = med[name]
            shown = f"{ratio:.2f}x" if name == "auto" else ""
            label = "bf16 NCHW (before)" if name == "before" else "auto"
            print(f"| {data} | {args.epochs} | {label} | {wall:.1f} | {train:.1f} | {acc:.4f} | {shown} |")
        sys.stdout.flush()


def scoring(args: argparse.Namespace) -> None:
    import timm
    import torch

    from trainer.loop.steps import autocast_for
    from trainer.loop.variant import Variant

    names = ("fp32 NCHW", "fp32 channels_last", "bf16 NCHW", "bf16 channels_last")
    print(f"| model | {' | '.join(names)} | fastest in fp32 (the numbers of every export) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        size = {"img_size": args.image} if "vit" in name else {}
        model = timm.create_model(name, pretrained=False, num_classes=10, **size).eval()
        x = torch.randn(args.batch, 3, args.image, args.image)
        variants = [Variant(p, c) for p in ("fp32", "bf16") for c in (False, True)]
        times: dict[str, list[float]] = {str(v): [] for v in variants}
        outputs: dict[str, torch.Tensor] = {}
        for _ in range(args.rounds):
            for v in variants:
                fmt = torch.channels_last if v.channels_last else torch.contiguous_format
                model.to(memory_format=fmt)
                xv = x.contiguous(memory_format=fmt)
                with torch.no_grad(), autocast_for("cpu", v.precision)():
                    model(xv)  # warm-up
                    taken = []
                    for _ in range(5):
                        t0 = time.perf_counter()
                        out = model(xv)
                        taken.append(time.perf_counter() - t0)
                outputs[str(v)] = out.float()
                times[str(v)].append(statistics.median(taken))
        base = outputs["fp32 NCHW"]
        cells, median = [], {v: statistics.median(times[v]) for v in names}
        for v in names:
            diff = float((outputs[v] - base).abs().max())
            agree = float((outputs[v].argmax(1) == base.argmax(1)).float().mean())
            cells.append(f"{median[v]:.3f} s (max diff {diff:.1e}, top-1 same {agree:.0%})")
        fp32 = min(("fp32 NCHW", "fp32 channels_last"), key=median.__getitem__)  # fp32: the exports' numbers
        print(f"| {name} | {' | '.join(cells)} | {fp32} ({median['fp32 NCHW'] / median[fp32]:.2f}x fp32 NCHW) |")
        sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    models = "efficientnet_lite0,mobilenetv3_large_100,resnet18,convnext_tiny,vit_tiny_patch16_224"
    for name, batch in (("steps", 32), ("scoring", 128)):
        s = sub.add_parser(name)
        s.add_argument("--models", default=models)
        s.add_argument("--image", type=int, default=64)
        s.add_argument("--batch", type=int, default=batch)
        s.add_argument("--rounds", type=int, default=3)
    r = sub.add_parser("runs")
    r.add_argument("--data", default="digits,mnist5k,patches")
    r.add_argument("--epochs", type=int, default=2)
    r.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    {"steps": steps, "runs": runs, "scoring": scoring}[args.what](args)


if __name__ == "__main__":
    main()

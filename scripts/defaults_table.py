"""The defaults against one change at a time, on several sets and run lengths, as a Markdown table:
each cell a real `train` run (EfficientNet-Lite0, packaged ImageNet weights) in its own folder under
outputs/defaults/. A rule is kept only where it wins on every set.

    python scripts/defaults_table.py [--data digits,mnist5k,patches] [--epochs 1,2,5,10]
                                     [--variants defaults,head,backbone1,lr2x] [--out FILE]

Variants: defaults (`train`); head (the head-only stage the other way round from
`finetune.head_epochs=auto`: one head epoch where auto has none, none where it has some); backbone1 (`finetune.backbone_lr_mult=1.0`: one lr for all layers); lr2x and lrhalf
(`optimizer.lr` twice or half the default); batch32 (`data.batch_size=32`); affine and flipcrop
(`data.augment`: small shifts and rotations of the whole image, or a random resized crop + flip). A cell may be skipped with
--skip data:epochs:variant,... (e.g. the long runs of the largest set).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from transfer_table import run_train  # scripts/ is on the path when a script runs

from trainer.loop.stages import head_epochs_for

LR = 4.0e-3  # conf/optimizer/adamw.yaml


def variant(name: str, epochs: int) -> list[str]:
    return {
        "defaults": [],
        "head": [f"finetune.head_epochs={0 if head_epochs_for('auto', epochs) else 1}"],
        "backbone1": ["finetune.backbone_lr_mult=1.0"],
        "lr2x": [f"optimizer.lr={2 * LR:g}"],
        "lrhalf": [f"optimizer.lr={LR / 2:g}"],
        "batch32": ["data.batch_size=32"],
        "affine": ["data.augment=affine"],
        "flipcrop": ["data.augment=flip_crop"],
    }[name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits,mnist5k,patches")
    ap.add_argument("--epochs", default="1,2,5,10")
    ap.add_argument("--variants", default="defaults,head,backbone1,lr2x")
    ap.add_argument("--skip", default="", help="cells left out, as data:epochs:variant")
    ap.add_argument("--out", default=None, help="also write the table to this file (rewritten after each cell)")
    args = ap.parse_args()
    skip = {tuple(c.split(":")) for c in args.skip.split(",") if c}
    root = Path("outputs/defaults") / time.strftime("%Y-%m-%d_%H-%M-%S")
    lines = ["| data | epochs | variant | best val acc | at epoch | wall (s) |", "|---|---|---|---|---|---|"]
    for data in args.data.split(","):
        for epochs in map(int, args.epochs.split(",")):
            for name in args.variants.split(","):
                if (data, str(epochs), name) in skip:
                    continue
                run_dir = root / f"{data}-{epochs}-{name}"
                cmd = [sys.executable, "-m", "trainer", f"data={data}", f"trainer.epochs={epochs}"]
                cmd += [*variant(name, epochs), f"hydra.run.dir={run_dir}"]
                m, wall = run_train(cmd, run_dir, f"{data} {epochs} {name}")
                lines.append(f"| {data} | {epochs} | {name} | {m['best']:.4f} | {m['best_epoch']} | {wall:.0f} |")
                print(lines[-1], flush=True)
                if args.out:
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()

"""Scratch vs linear probe vs full vs staged fine-tuning on digits, same epoch budget: a Markdown table.

    python scripts/transfer_table.py [--epochs 8] [--out docs/transfer.md]

Each row is a real `train` run (EfficientNet-Lite0, packaged ImageNet weights where pretrained),
in its own folder under outputs/transfer/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROWS = [
    ("scratch (random init, all layers)", ["+experiment=scratch"]),
    ("linear probe (frozen backbone, cached features)", ["+experiment=linear_probe"]),
    ("linear probe at 128 px (frozen backbone, cached features)", ["+experiment=linear_probe", "data.image_size=128"]),
    ("full fine-tune (all layers, one lr)", ["+experiment=full"]),
    ("staged fine-tune (1 epoch head, then all; backbone lr x0.5) = `train`", ["+experiment=demo"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args()
    root = Path("outputs/transfer") / time.strftime("%Y-%m-%d_%H-%M-%S")
    lines = [
        f"| method ({args.epochs} epochs) | best val acc | at epoch | lowest val loss | wall time (s) |",
        "|---|---|---|---|---|",
    ]
    for i, (label, overrides) in enumerate(ROWS):
        run_dir = root / str(i)
        cmd = [sys.executable, "-m", "trainer", *overrides, f"trainer.epochs={args.epochs}", f"hydra.run.dir={run_dir}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            sys.exit(f"row {label!r} failed")
        m = json.loads((run_dir / "metrics.json").read_text())
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

"""What temperature scaling and test-time augmentation do for the probabilities and the accuracy a user
gets, on the built-in sets.

    python scripts/bench_calibration.py [--data digits,mnist5k,patches] [--epochs 2] [--rounds 2]

For each set: `train data=SET trainer.epochs=N` with the default recipe, with label smoothing 0.1 and
with mixup 0.2; each run's own figures from metrics.json (the temperature, ECE / NLL / Brier before it
and, on the held-out halves, after it). Then, on the default recipe's run, `evaluate tta=none` and
`evaluate tta=flip` timed side by side in alternating order (`--rounds` times, medians): val accuracy,
val loss and seconds. Nothing is asserted: the numbers are for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from transfer_table import run_train  # scripts/ is on the path when a script runs

RECIPES = {"default": [], "label smoothing 0.1": ["loss.label_smoothing=0.1"], "mixup 0.2": ["data.mixup=0.2"]}


def evaluate(run_dir: Path, tta: str) -> tuple[dict, float]:
    out = run_dir / f"eval-tta-{tta}"
    cmd = [sys.executable, "-m", "trainer.use.evaluate", f"checkpoint={run_dir}", f"tta={tta}", f"out={out}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"evaluate tta={tta} failed: {proc.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text()), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits,mnist5k,patches")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    root = Path("outputs/calibration") / time.strftime("%Y-%m-%d_%H-%M-%S")
    calibration = [
        "| data | recipe | best val acc | temperature | ECE before -> after | NLL before -> after | Brier before -> after |",
        "|---|---|---|---|---|---|---|",
    ]
    tta = ["| data | tta | val acc | val loss | evaluate (s) | time ratio |", "|---|---|---|---|---|---|"]
    for data in args.data.split(","):
        default_run = None
        for name, extra in RECIPES.items():
            run_dir = root / f"{data}-{name.split()[0]}"
            cmd = [sys.executable, "-m", "trainer", f"data={data}", f"trainer.epochs={args.epochs}", *extra]
            metrics, _ = run_train([*cmd, f"hydra.run.dir={run_dir}"], run_dir, f"{data} {name}")
            c = metrics["calibration"]
            b, a = c["before"], c["after"]
            calibration.append(
                f"| {data} | {name} | {metrics['best']:.4f} | {c['temperature'][0]:.3f} | {b['ece']:.4f} -> "
                f"{a['ece']:.4f} | {b['nll']:.4f} -> {a['nll']:.4f} | {b['brier']:.4f} -> {a['brier']:.4f} |"
            )
            print(calibration[-1], flush=True)
            default_run = default_run or run_dir
        found: dict[str, list[tuple[float, float, float]]] = {"none": [], "flip": []}
        for r in range(args.rounds):
            for mode in ("none", "flip") if r % 2 == 0 else ("flip", "none"):
                report, wall = evaluate(default_run, mode)
                found[mode].append((report["val/acc"], report["val/loss"], wall))
        med = {k: [statistics.median(c) for c in zip(*v)] for k, v in found.items()}
        for mode in ("none", "flip"):
            acc, loss, wall = med[mode]
            tta.append(f"| {data} | {mode} | {acc:.4f} | {loss:.4f} | {wall:.1f} | {wall / med['none'][2]:.2f}x |")
            print(tta[-1], flush=True)
    print("\n" + "\n".join(calibration) + "\n\n" + "\n".join(tta))


if __name__ == "__main__":
    main()

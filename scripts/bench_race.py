"""The best model within one time budget T: a race against the defaults given T and a grid given T / n.

    python scripts/bench_race.py [--data digits,mnist5k,patches] [--times 8]
        [--sweep "optimizer.lr=1e-3,4e-3,1.6e-2,6.4e-2 finetune.backbone_lr_mult=0.5,1.0"]

For each set, T is ``--times`` x the wall time of one `train data=SET trainer.epochs=2` (measured first,
here). Then, one after the other on the same machine:
  (a) `train -m data=SET <sweep> hydra/sweeper=race hydra.sweeper.budget=T`: the winner's best val acc;
  (b) `train data=SET trainer.time_budget=T`: the defaults given the whole budget;
  (c) `train -m data=SET <sweep> trainer.time_budget=T/n`: a plain grid, each of the n configurations
      given an equal share; its best job.
Each row gives the best val acc, the epochs that run trained, and the wall time against T (the race's
own clock from race.json, and the command's wall time, process start included). Nothing is asserted:
the numbers are for docs/sweeps.md. The race and the grid choose by val acc, so their figure is the
best of several on the same val split (a slight optimism the single run (b) does not have).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

SWEEP = "optimizer.lr=1e-3,4e-3,1.6e-2,6.4e-2 finetune.backbone_lr_mult=0.5,1.0"


def run(cmd: list[str], what: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "trainer", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        sys.exit(f"{what} failed")
    return wall


def best_row(sweep_dir: Path) -> dict:
    with open(sweep_dir / "summary.csv") as f:
        return next(csv.DictReader(f))


def epochs_of(run_dir: Path) -> int:
    return int(json.loads((run_dir / "metrics.json").read_text())["epochs_done"])


def one_set(data: str, times: float, sweep: list[str], root: Path) -> list[str]:
    n = 1
    for override in sweep:
        n *= len(override.split("=", 1)[1].split(","))
    t2 = run([f"data={data}", "trainer.epochs=2", f"hydra.run.dir={root / data / 'two-epochs'}"], "2 epochs")
    budget = times * t2
    rows = []

    race = root / data / "race"
    wall = run(
        [
            "-m",
            f"data={data}",
            *sweep,
            "hydra/sweeper=race",
            f"hydra.sweeper.budget={budget:.0f}s",
            f"hydra.sweep.dir={race}",
        ],
        "race",
    )
    win = best_row(race)
    used = json.loads((race / "race.json").read_text())["used_s"]
    plan = json.loads((race / "race.json").read_text())["plan"]
    rows.append(
        f"| {data} | (a) race over {n} ({plan['configs']} raced) | {float(win['best']):.4f} | {win['swept']} | "
        f"{epochs_of(Path(win['run_dir']))} | {used:.0f} s ({used / budget:.2f} T); wall {wall:.0f} s |"
    )

    single = root / data / "time-budget"
    wall = run([f"data={data}", f"trainer.time_budget={budget:.0f}s", f"hydra.run.dir={single}"], "time budget")
    m = json.loads((single / "metrics.json").read_text())
    rows.append(
        f"| {data} | (b) defaults, time_budget=T | {m['best']:.4f} | defaults | {m['epochs_done']} | wall {wall:.0f} s ({wall / budget:.2f} T) |"
    )

    grid = root / data / "grid"
    share = budget / n
    wall = run(["-m", f"data={data}", *sweep, f"trainer.time_budget={share:.0f}s", f"hydra.sweep.dir={grid}"], "grid")
    top = best_row(grid)
    rows.append(
        f"| {data} | (c) grid of {n}, time_budget=T/{n} each | {float(top['best']):.4f} | {top['swept']} | "
        f"{epochs_of(Path(top['run_dir']))} | wall {wall:.0f} s ({wall / budget:.2f} T) |"
    )
    print(f"{data}: T = {times:g} x {t2:.1f} s = {budget:.0f} s", flush=True)
    for row in rows:
        print(row, flush=True)
    return [f"| {data} | T = {times:g} x {t2:.0f} s = {budget:.0f} s | | | | |", *rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits,mnist5k,patches")
    ap.add_argument("--times", type=float, default=8.0)
    ap.add_argument("--sweep", default=SWEEP)
    args = ap.parse_args()
    root = Path("outputs/race-bench") / time.strftime("%Y-%m-%d_%H-%M-%S")
    lines = [
        "| data | what | best val acc | configuration | epochs | time used |",
        "|---|---|---|---|---|---|",
    ]
    for data in args.data.split(","):
        lines += one_set(data, args.times, args.sweep.split(), root)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

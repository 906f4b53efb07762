"""Epoch time of a linear probe (frozen backbone) vs full fine-tuning, measured side by side.

    python scripts/bench_probe.py                 # EfficientNet-Lite0 on digits, 3 interleaved rounds
    python scripts/bench_probe.py --quick         # a tiny model on generated data (CI smoke run)

Rounds interleave the variants (full, probe, probe + cached features) so a noisy machine slows
all of them alike; the table gives the median epoch time and its ratio to full fine-tuning.
With cached features the first epoch pays one forward pass over the data; later epochs train
the head on the cached features only.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

CONF = str(Path(__file__).resolve().parent.parent / "conf")

VARIANTS = {
    "full fine-tune": ["finetune.head_epochs=0"],
    "linear probe": ["+experiment=linear_probe", "finetune.cache_features=false"],
    "linear probe, cached (first epoch)": ["+experiment=linear_probe"],
    "linear probe, cached (later epochs)": ["+experiment=linear_probe"],
}


def main() -> None:
    from hydra import compose, initialize_config_dir

    from trainer.loop.build import build_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny model, generated data, 1 round")
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. model=resnet18")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = ["trainer.epochs=3", *args.overrides]
    if args.quick:
        base += ["model.name=test_resnet", "model.pretrained=false", "model.weights=null", "data=fake"]
        args.rounds = 1
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for r in range(args.rounds):
            runs = {}
            for name, overrides in VARIANTS.items():
                if name.endswith("(later epochs)"):
                    run = runs["linear probe, cached (first epoch)"]  # same run, its next epoch
                    epoch = 1
                else:
                    run = build_run(compose("train", overrides=base + overrides), run_dir=f"{tmp}/{r}-{len(runs)}")
                    runs[name] = run
                    epoch = 0
                t0 = time.perf_counter()
                run.train_one_epoch(epoch)
                times[name].append(time.perf_counter() - t0)
    full = statistics.median(times["full fine-tune"])
    print("| variant | median epoch (s) | ratio to full | rounds |\n|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med / full:.3f} | {len(ts)} |")


if __name__ == "__main__":
    main()

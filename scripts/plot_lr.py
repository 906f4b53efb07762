"""Draw the learning-rate curve a config would follow, without training: a PNG, one line per group.

    python scripts/plot_lr.py [--out lr.png] [overrides ...]
    python scripts/plot_lr.py scheduler=onecycle trainer.epochs=20 optimizer.lr=3e-3

Steps per epoch come from the data option (its size and data.batch_size, trainer.accumulate);
stages (finetune.*) are followed, each with its own optimizer and schedule, as in a real run.
A plateau schedule depends on validation results and is drawn flat.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path


def lr_curves(overrides: list[str]) -> tuple[dict[str, list[float]], int, list[int]]:
    """lr of each group label after every optimizer step; steps per epoch; the step where each stage starts.

    The run's own stage plan over a stand-in model (``trainer.loop.estimate.lr_curves``): the same groups, lrs,
    optimizers and schedules as a real run, nothing trained.
    """
    import torch
    from hydra.utils import instantiate

    from trainer.config.schema import compose_config
    from trainer.loop.build import setup_stage_plan
    from trainer.loop.estimate import lr_curves as plan_curves

    cfg = compose_config(overrides)
    splits = instantiate(cfg.data.dataset)
    batch = int(cfg.data.batch_size)
    batches = len(splits.train) // batch if len(splits.train) > batch else 1
    steps_per_epoch = math.ceil(batches / max(1, int(cfg.trainer.accumulate)))
    plan = setup_stage_plan(cfg, torch.device("cpu"), "max")
    plan.freeze = cfg.model.get("freeze", "none")
    curves, starts = plan_curves(plan, steps_per_epoch)
    return curves, steps_per_epoch, starts


def draw(curves: dict[str, list[float]], steps_per_epoch: int, path: Path, title: str) -> None:
    from trainer.runs.plots import lr_png, write_png

    write_png(lr_png({f"lr/{k}": v for k, v in curves.items() if any(v)}, steps_per_epoch, title), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="lr.png")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    curves, steps_per_epoch, starts = lr_curves(args.overrides)
    draw(curves, steps_per_epoch, Path(args.out), " ".join(args.overrides) or "default config")
    for label, values in curves.items():
        if any(values):
            print(
                f"lr/{label}: first {values[0]:.3e}  peak {max(values):.3e}  last {values[-1]:.3e}  "
                f"({len(values)} steps, {steps_per_epoch} per epoch, stages start at steps {starts})"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Evaluate a checkpoint on its run's validation split: loss, the task's metrics, per-class values.

    python scripts/evaluate.py outputs/<date>/<time>/checkpoints/best.pt

The run is rebuilt from the config stored in the checkpoint (its ``_target_`` entries must be
torch., torchvision., timm. or trainer. objects); no weights are downloaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

import torch
from omegaconf import OmegaConf

from trainer.build import build_run
from trainer.checkpoint import load_checkpoint
from trainer.errors import UserError
from trainer.targets import check_targets


def evaluate_checkpoint(path: str, trusted: tuple[str, ...] = ()) -> dict:
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    cfg.allow_targets = list(trusted)  # a stored list is not trusted: only the one given here
    check_targets(cfg, extra=trusted, where=f"config stored in {path}")
    cfg.model.pretrained = False  # the checkpoint brings the weights
    cfg.resume = None
    cfg.trainer.device = "cpu" if not torch.cuda.is_available() else cfg.trainer.device
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(cfg, run_dir=tmp)
        if list(state["classes"]) != run.classes:
            raise UserError(f"{path} was trained on classes {state['classes']}, the data now has {run.classes}.")
        run.model.load_state_dict(state["model"])
        scalars, per_class, _ = run.evaluate()  # the task's metrics, one pass over the val split
        result: dict = {**scalars, "per_class": per_class}
    result["epoch"] = state["epoch"]
    result["classes"] = run.classes if run.settings.task != "binary" else [run.classes[1]]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument(
        "--allow-targets",
        nargs="*",
        default=[],
        help="packages whose _target_ entries you trust, e.g. my_parts. (a list stored in the run is not trusted)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        r = evaluate_checkpoint(args.checkpoint, tuple(args.allow_targets))
    except UserError as e:
        sys.exit(f"error: {e}")
    scalars = "  ".join(f"{k} {v:.4f}" for k, v in r.items() if k.startswith("val/"))
    print(f"{args.checkpoint} (epoch {r['epoch']}): {scalars}")
    metrics = list(r["per_class"])
    print(f"  {'class':>12}  " + "  ".join(f"{m:>9}" for m in metrics))
    for i, c in enumerate(r["classes"]):
        print(f"  {c:>12}  " + "  ".join(f"{r['per_class'][m][i]:9.4f}" for m in metrics))


if __name__ == "__main__":
    main()

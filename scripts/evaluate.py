"""Evaluate a checkpoint on its run's validation split: loss, accuracy, per-class accuracy.

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

from trainer.checkpoint import check_targets, load_checkpoint
from trainer.errors import UserError
from trainer.run import build_run


def evaluate_checkpoint(path: str) -> dict:
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    check_targets(cfg, extra=tuple(cfg.get("allow_targets") or ()), where=f"config stored in {path}")
    cfg.model.pretrained = False  # the checkpoint brings the weights
    cfg.resume = None
    cfg.trainer.device = "cpu" if not torch.cuda.is_available() else cfg.trainer.device
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(cfg, run_dir=tmp)
        if list(state["classes"]) != run.classes:
            raise UserError(f"{path} was trained on classes {state['classes']}, the data now has {run.classes}.")
        run.model.load_state_dict(state["model"])
        # one pass over the val split: loss, accuracy and per-class accuracy together
        n = len(run.classes)
        correct, total, loss_sum = torch.zeros(n), torch.zeros(n), 0.0
        run.model.eval()
        with torch.no_grad():
            for x, y, _bad in run.loaders.val:
                if x.shape[0] == 0:
                    continue
                out = run.model(x.to(run.device)).float().cpu()
                loss_sum += float(run.loss_fn.to("cpu")(out, y)) * y.shape[0]
                pred = out.argmax(1)
                total += torch.bincount(y, minlength=n)
                correct += torch.bincount(y[pred == y], minlength=n)
    result = {"val/loss": loss_sum / float(total.sum()), "val/acc": float(correct.sum() / total.sum())}
    result["per_class_acc"] = {c: round(float(a), 4) for c, a in zip(run.classes, correct / total.clamp(min=1))}
    result["epoch"] = state["epoch"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        r = evaluate_checkpoint(args.checkpoint)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"{args.checkpoint} (epoch {r['epoch']}): val/loss {r['val/loss']:.4f}  val/acc {r['val/acc']:.4f}")
    for c, a in r["per_class_acc"].items():
        print(f"  {c:>12}  {a:.4f}")


if __name__ == "__main__":
    main()

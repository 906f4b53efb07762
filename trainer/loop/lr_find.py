"""The learning-rate range test (``train lr_find=true``, ``optimizer.lr=auto``).

The lr grows exponentially from ``START`` to ``END`` over up to ``STEPS`` optimizer steps, from the
run's start weights, on its own batches, in the plan's widest stage (the last one that trains more
than the head: the base lr matters most there, and a head alone tolerates far larger lrs); the groups
keep their lr ratios (backbone x finetune.backbone_lr_mult, ...). The test stops when the smoothed
loss passes 4x its lowest value. Afterwards the weights, the optimizer and the random streams are put
back, and the schedule: the run starts from the same state as without the test. The suggestion is the lr where the
smoothed loss falls fastest (steepest descent against log lr) before its minimum, and at most a tenth
of the lr at that minimum (the two classic rules of the range test).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.loop.trial import trial

if TYPE_CHECKING:
    from trainer.loop.run import Run

log = logging.getLogger("trainer")

START, END, STEPS = 1e-7, 10.0, 100
SMOOTHING = 0.9  # exponential smoothing of the loss (bias-corrected)
DIVERGED = 4.0  # stop when the smoothed loss exceeds this times its lowest value


def range_test(run: Run, steps: int | None = None) -> dict[str, Any]:
    """lrs, raw and smoothed losses, and the suggested base lr; the run's state is unchanged after it."""
    steps = steps or STEPS
    base = [float(g.get("initial_lr", g["lr"])) for g in run.optimizer.param_groups]  # before any warm-up
    mults = [b / (max(base) or 1.0) for b in base]
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    avg, batches = 0.0, _batches(run)
    with trial(run.model, run.optimizer, run.schedule, run.scaler):
        for i in range(steps):
            lr = START * (END / START) ** (i / max(1, steps - 1))
            for g, m in zip(run.optimizer.param_groups, mults, strict=True):
                g["lr"] = lr * m
            loss = _one_step(run, batches)
            avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
            value = avg / (1 - SMOOTHING ** (i + 1))
            lrs.append(lr)
            raw.append(loss)
            smooth.append(value)
            if not math.isfinite(value) or value > DIVERGED * min(smooth):
                break
    return {"lr": lrs, "loss": raw, "smoothed": smooth, "suggestion": suggest(lrs, smooth)}


def suggest(lrs: list[float], smooth: list[float]) -> float:
    """The lr of steepest descent of the smoothed loss (against log lr) before the loss's minimum."""
    finite = [i for i, v in enumerate(smooth) if math.isfinite(v)]
    if len(finite) < 3:
        raise ValueError("too few steps to suggest an lr")
    lowest = min(finite, key=lambda i: smooth[i])
    span = finite[: max(3, finite.index(lowest) + 1)]
    slopes = [
        (smooth[b] - smooth[a]) / (math.log(lrs[b]) - math.log(lrs[a])) for a, b in zip(span, span[1:], strict=False)
    ]
    steepest = min(range(len(slopes)), key=lambda k: slopes[k])
    return float(min(lrs[span[steepest]], lrs[lowest] / 10))


def _batches(run: Run) -> Any:
    epoch = 0
    while True:
        for x, y, *_ in run.inputs.train(epoch, 0):
            if x.shape[0]:
                yield x, y
        epoch += 1


def _one_step(run: Run, batches: Any) -> float:
    """One optimizer step as training takes it (the stage's step: accumulation, clipping, scaler);
    its mean loss, inf when a batch's loss was not finite."""
    run.model.train(not run.head_only)
    run.head.train()
    losses = [run.step.backward(*next(batches)) for _ in range(run.accumulate)]
    run.step.update()  # the schedule moves too; the lr is set again before the next step
    if any(loss is None for loss in losses):  # skipped as non-finite (trainer.nonfinite=skip)
        return math.inf
    return float(torch.stack([loss.detach().float() for loss in losses]).mean().item())


def find_lr(run: Run) -> float:
    """Run the range test on the run's first stage, write its report into the run folder, log it; the lr."""
    from trainer.errors import UserError

    if isinstance(run.optimizer, torch.optim.LBFGS):
        raise UserError(
            "the lr range test steps the optimizer once per batch; optimizer=lbfgs cannot: give optimizer.lr."
        )
    stages = run.plan.stages
    widest = max([i for i, st in enumerate(stages) if st.train != "head"] or [0])
    first = run.state.stage_idx
    if widest != first:
        run.enter_stage(widest)
    result = range_test(run)
    if widest != first:
        run.enter_stage(first)
    csv_path, png_path = write_report(result, run.run_dir)
    log.info(
        "lr range test (stage %d): %d steps, lr %.1e -> %.1e; suggested optimizer.lr=%.2e (%s, %s)",
        widest + 1,
        len(result["lr"]),
        result["lr"][0],
        result["lr"][-1],
        result["suggestion"],
        png_path,
        csv_path.name,
    )
    return float(result["suggestion"])


def write_report(result: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """lr_find.csv (step, lr, loss, smoothed) and lr_find.png (the smoothed loss against the lr, log x)."""
    from trainer.runs.checkpoint import atomic_write_bytes
    from trainer.runs.plots import lr_find_png, write_png

    folder.mkdir(parents=True, exist_ok=True)
    rows = ["step,lr,loss,smoothed"] + [
        f"{i},{lr:.6g},{loss:.6g},{s:.6g}"
        for i, (lr, loss, s) in enumerate(zip(result["lr"], result["loss"], result["smoothed"], strict=True))
    ]
    csv_path, png_path = folder / "lr_find.csv", folder / "lr_find.png"
    atomic_write_bytes(csv_path, ("\n".join(rows) + "\n").encode())
    write_png(lr_find_png(result["lr"], result["smoothed"], result["suggestion"]), png_path)
    return csv_path, png_path

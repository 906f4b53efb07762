"""What a run will do and what it will cost, said before the compute is spent.

Every run logs the plan when it starts (data, stages, steps) and, after its first few steps, an
estimate of the epoch and the run measured on them. ``train plan=true`` measures a few steps, draws
the learning-rate curve (``lr.png``) in the run folder and stops without training.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trainer.loop.run import Run

log = logging.getLogger("trainer")

WARMUP_STEPS = 2  # the first steps pay for allocation, autotuning, compilation: not counted
MEASURED_STEPS = 5


def plan_lines(run: Run) -> list[str]:
    """The plan: data, input, stages with their trainable parameters and lrs, steps."""
    s, loaders, plan = run.settings, run.loaders, run.plan
    spec = loaders.input_spec
    train_n, val_n = (len(getattr(loader.dataset, "images", loader.dataset)) for loader in (loaders.train, loaders.val))
    total = sum(st.steps or st.epochs * run.steps_per_epoch for st in plan.stages)  # steps: a shortened last epoch
    lines = [
        f"plan: {run.state.epochs} epoch(s) in {len(plan.stages)} stage(s); {train_n} train / {val_n} val images at "
        f"{spec['size']} px, batch {loaders.batch_size} x accumulate {run.accumulate}: {run.steps_per_epoch} "
        f"optimizer steps an epoch, {total} in all; {s.device}, {s.precision}",
    ]
    params = sum(p.numel() for p in run.model.parameters())
    for i, st in enumerate(plan.stages):
        what = "the head only" if st.train == "head" else "all layers" if st.train == "all" else st.train
        lr = st.lr if st.lr is not None else plan.lr
        lines.append(f"  stage {i + 1}: epochs {st.start + 1}-{st.end}, {what}, lr {lr:.2e} (of {params:,} params)")
    return lines


def log_plan(run: Run) -> None:
    for line in plan_lines(run) if run.main else ():
        log.info(line)


def lr_curves(plan: Any, steps_per_epoch: int) -> tuple[dict[str, list[float]], list[int]]:
    """lr of each group label after every optimizer step, following the plan's stages, over a stand-in
    model (one backbone and one head parameter): the same groups, optimizers and schedules, nothing
    trained; and the step where each stage starts. A plateau schedule is drawn flat."""
    plan = copy.copy(plan)
    plan.freeze = "backbone" if plan.freeze == "backbone" else "none"  # the stand-in's parts
    model = torch.nn.ModuleDict({"backbone": torch.nn.Linear(1, 1, bias=False), "head": torch.nn.Linear(1, 1)})
    steps: list[dict[str, float]] = []
    starts = []
    for index, stage in enumerate(plan.stages):
        starts.append(len(steps))
        setup = plan.setup(index, model, {"head.weight", "head.bias"}, steps_per_epoch)
        for step in range(stage.epochs * steps_per_epoch):
            setup.optimizer.step()
            setup.schedule.after_step()
            if (step + 1) % steps_per_epoch == 0 and setup.schedule.interval == "epoch":
                setup.schedule.after_epoch(0.0)
            steps.append({g["label"]: g["lr"] for g in setup.optimizer.param_groups})
    labels = ["head", "backbone"] + sorted({k for lrs in steps for k in lrs} - {"head", "backbone"})
    return {label: [lrs.get(label, 0.0) for lrs in steps] for label in labels}, starts


class Estimate:
    """Times optimizer steps WARMUP_STEPS+1 .. +MEASURED_STEPS of each stage (reset when one starts) and
    logs, once a stage, what an epoch and the rest of the stage take at that pace (evaluation not included)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.warmup = WARMUP_STEPS  # steps not counted (a time budget also skips the loaders' first burst)
        self.reset()

    def reset(self) -> None:
        self.first_step: int | None = None
        self.t0 = 0.0
        self.seconds_per_step: float | None = None

    def tick(self, quiet: bool = False) -> None:
        """After each optimizer step (``quiet``: timed without the log line)."""
        if self.seconds_per_step is not None:
            return
        if self.first_step is None:
            self.first_step = self.run.state.global_step - 1  # this stage's (or resumed session's) first step
        done = self.run.state.global_step - self.first_step
        if done == self.warmup:
            self.t0 = self.now()
        elif done == self.warmup + MEASURED_STEPS:
            self.seconds_per_step = (self.now() - self.t0) / MEASURED_STEPS
            if not quiet:
                log.info(self.line())

    def now(self) -> float:
        """The clock once the device has finished the queued work (twice a stage: off the hot path)."""
        if self.run.device.type == "cuda":
            torch.cuda.synchronize(self.run.device)
        return time.perf_counter()

    def line(self) -> str:
        run, per = self.run, self.seconds_per_step
        index = run.state.stage_idx or 0
        if per is None:
            return f"estimate, stage {index + 1}: too few steps to time ({run.steps_per_epoch} an epoch)"
        epochs = run.plan.stages[index].epochs
        return (
            f"estimate, stage {index + 1}: {per:.3f} s an optimizer step (timed over {MEASURED_STEPS} steps): an "
            f"epoch ~{_duration(per * run.steps_per_epoch)}, the stage's {epochs} epoch(s) "
            f"~{_duration(per * run.steps_per_epoch * epochs)}, plus evaluation"
        )


def measure_and_stop(run: Run) -> list[str]:
    """``plan=true``: time a few steps of each stage (nothing is saved), draw lr.png; what it found."""
    from trainer.runs.plots import lr_png, write_png

    total, timed = 0.0, True
    for index, stage in enumerate(run.plan.stages):
        if index != run.state.stage_idx:
            run.enter_stage(index)
        run.estimate.reset()
        time_steps(run)
        per = run.estimate.seconds_per_step
        timed = timed and per is not None
        total += (per or 0.0) * stage.epochs * run.steps_per_epoch
    curves, _ = lr_curves(run.plan, run.steps_per_epoch)
    path = run.run_dir / "lr.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(lr_png({f"lr/{k}": v for k, v in curves.items() if any(v)}, run.steps_per_epoch, "plan"), path)
    lines = [f"estimate, whole run: ~{_duration(total)} of training plus evaluation"] if timed else []
    return [*lines, f"lr curve: {path}"]


def time_steps(run: Run, passes: int = 1, quiet: bool = False) -> float | None:
    """Train optimizer steps of the current stage until the estimate has timed them (over up to ``passes``
    passes of the data, for an epoch shorter than that); the seconds per step, or None."""
    micro = 0
    for _ in range(passes):
        for x, y, *_ in run.inputs.train(0, 0):
            if x.shape[0] == 0:
                continue
            run.step.backward(x, y)
            micro += 1
            if micro % run.accumulate:
                continue
            run.step.update()
            run.state.global_step += 1
            run.estimate.tick(quiet)
            if run.estimate.seconds_per_step is not None:
                return run.estimate.seconds_per_step
    if not quiet:
        log.info(run.estimate.line())
    return None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

"""Learning-rate schedules: when they step, a warm-up in front of any of them, and our own rules.

A scheduler option is a ``_partial_`` (a torch ``lr_scheduler`` or a function here) completed at
build time with the optimizer and the run-time values its signature names (``total_steps``,
``steps_per_epoch``, ``epochs``); ``schedule.interval`` says whether it steps after every optimizer
step or every epoch, and ``schedule.warmup_epochs`` puts a linear warm-up in front of it.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from trainer.config.targets import buildable
from trainer.errors import UserError
from trainer.loop.optim import runtime_kwargs


def build_schedule(
    factory: functools.partial,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    epochs: int,
    interval: str = "step",
    warmup_epochs: float = 0.0,
    monitor_mode: str = "max",
    total_steps: int | None = None,
) -> Schedule:
    """The configured scheduler over ``epochs`` of ``steps_per_epoch`` steps, with its interval and warm-up.

    The scheduler's own length excludes the warm-up. A scheduler that steps on the monitored
    metric (ReduceLROnPlateau) follows the monitor's direction unless its ``mode`` is set.
    """
    target = factory.func
    total = steps_per_epoch * epochs if total_steps is None else total_steps  # fewer: a shortened last epoch
    warmup_steps = min(total, int(round(warmup_epochs * steps_per_epoch)))
    available = {"total_steps": max(1, total - warmup_steps), "steps_per_epoch": steps_per_epoch, "epochs": epochs}
    runtime = {k: v for k, v in runtime_kwargs(target, available).items() if k not in factory.keywords}
    metric = isinstance(target, type) and issubclass(target, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if metric and "mode" not in factory.keywords:
        runtime["mode"] = monitor_mode
    try:
        scheduler = factory(optimizer, **runtime)
    except (TypeError, ValueError) as e:
        name = f"{target.__module__}.{target.__qualname__}"
        raise UserError(
            f"scheduler {name}: {str(e).splitlines()[0]}. Check the scheduler.* keys (train --cfg job shows them)."
        ) from None
    return Schedule(scheduler, "metric" if metric else interval, optimizer, warmup_steps)


class Stretchable:
    """A rule whose lr follows the run's progress from 0 to 1 at ``total`` steps, and whose length can change
    mid-run (a time budget re-planned from the measured pace): :meth:`stretch` keeps the progress reached
    at that step and spreads what is left over the new length, so the lr goes on from where it is, without
    a jump, and still ends where the rule ends. The knot (``at``, ``at_progress``) is plain state, so it is
    saved and restored with the scheduler's."""

    total: int
    at: int = 0  # the step of the last stretch (or where the progress starts)
    at_progress: float = 0.0  # the progress there

    def progress(self, step: int) -> float:
        return min(1.0, self.at_progress + (1 - self.at_progress) * (step - self.at) / max(1, self.total - self.at))

    def stretch(self, step: int, extra_steps: int) -> bool:
        """From ``step`` on, ``extra_steps`` more (or fewer, when negative) in all; False where it cannot."""
        if self.total + extra_steps <= max(step, self.at):
            return False
        if step >= self.at:  # before the knot (inside a warm-up) the progress has not started: only the end moves
            self.at, self.at_progress = step, self.progress(step)
        self.total += extra_steps
        return True


class WarmupCosine(Stretchable):
    """lr factor: linear from 0 to 1 over ``warmup`` steps, cosine to ``min_ratio`` at ``total``."""

    def __init__(self, total: int, warmup: int, min_ratio: float) -> None:
        self.total, self.warmup, self.min_ratio = max(1, total), max(0, warmup), min_ratio
        self.at = self.warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * self.progress(step)))


@buildable
def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.5,
    min_lr_ratio: float = 0.01,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to ``min_lr_ratio`` x lr."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup, min_lr_ratio))


@buildable
def cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, eta_min: float = 0.0
) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """Cosine decay over the whole run (per optimizer step)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps), eta_min=eta_min)


@buildable
def onecycle(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> torch.optim.lr_scheduler.OneCycleLR:
    """One-cycle policy peaking at each group's own lr; it reaches its final lr on the run's last step.

    (torch counts the step done at construction, so the cycle is one step longer than the run.)
    """
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g.get("initial_lr", g["lr"]) for g in optimizer.param_groups],
        total_steps=max(2, total_steps + 1),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )


class LambdaRule(Stretchable):
    """Named lr rules for LambdaLR (a YAML file cannot hold a Python lambda). Factor of the base lr at a step.

    - ``constant``: 1
    - ``linear``: from 1 down to ``end_ratio`` over the run
    - ``step_decay``: ``factor ** (epoch // every)``, e.g. x0.1 every 30 epochs
    - ``inverse_sqrt``: ``1 / sqrt(1 + epoch)`` (fractional epochs)
    - ``exponential``: ``factor ** epoch`` (fractional epochs)
    """

    RULES = ("constant", "linear", "step_decay", "inverse_sqrt", "exponential")

    def __init__(
        self,
        rule: str,
        total_steps: int,
        steps_per_epoch: int,
        factor: float = 0.1,
        every: int = 30,
        end_ratio: float = 0.0,
    ) -> None:
        if rule not in self.RULES:
            raise UserError(f"scheduler.rule={rule!r} is not known: use one of {', '.join(self.RULES)}.")
        self.rule, self.total, self.per_epoch = rule, max(1, total_steps), max(1, steps_per_epoch)
        self.factor, self.every, self.end_ratio = float(factor), max(1, int(every)), float(end_ratio)

    def __call__(self, step: int) -> float:
        epoch = step / self.per_epoch
        if self.rule == "linear":
            return 1.0 - (1.0 - self.end_ratio) * self.progress(step)
        if self.rule == "step_decay":
            return self.factor ** (step // self.per_epoch // self.every)
        if self.rule == "inverse_sqrt":
            return 1.0 / math.sqrt(1.0 + epoch)
        if self.rule == "exponential":
            return self.factor**epoch
        return 1.0


@buildable
def lambda_rule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    rule: str = "linear",
    factor: float = 0.1,
    every: int = 30,
    end_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with a named rule (see LambdaRule), stepped per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, LambdaRule(rule, total_steps, steps_per_epoch, factor, every, end_ratio)
    )


class ConstantFactor:
    def __init__(self, factor: float) -> None:
        self.factor = float(factor)

    def __call__(self, _epoch: int) -> float:
        return self.factor


@buildable
def multiplicative(optimizer: torch.optim.Optimizer, factor: float = 0.95) -> torch.optim.lr_scheduler.MultiplicativeLR:
    """lr x factor at every step of the schedule (per epoch with interval: epoch)."""
    return torch.optim.lr_scheduler.MultiplicativeLR(optimizer, ConstantFactor(factor))


@buildable
def cosine_warm_restarts(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    restart_epochs: float = 1.0,
    mult: int = 2,
    eta_min: float = 0.0,
) -> torch.optim.lr_scheduler.CosineAnnealingWarmRestarts:
    """SGDR: cosine over ``restart_epochs``, restart at lr, each cycle ``mult`` x longer; per optimizer step."""
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=max(1, int(round(restart_epochs * steps_per_epoch))), T_mult=int(mult), eta_min=eta_min
    )


@buildable
def cyclic(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    base_ratio: float = 0.1,
    half_cycle_epochs: float = 1.0,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> torch.optim.lr_scheduler.CyclicLR:
    """Cyclical lr between ``base_ratio`` x lr and each group's lr, a half cycle every ``half_cycle_epochs``."""
    tops = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.CyclicLR(
        optimizer,
        base_lr=[t * base_ratio for t in tops],
        max_lr=tops,
        step_size_up=max(1, int(round(half_cycle_epochs * steps_per_epoch))),
        mode=mode,
        gamma=gamma,
        cycle_momentum=False,
    )


@buildable
def polynomial(
    optimizer: torch.optim.Optimizer, total_steps: int, power: float = 1.0
) -> torch.optim.lr_scheduler.PolynomialLR:
    """lr x (1 - step / total) ** power over the run, per optimizer step."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max(1, total_steps), power=power)


class Schedule:
    """A torch lr scheduler, when it steps, and an optional linear warm-up in front of it.

    ``interval``: ``step`` (after each optimizer step), ``epoch`` (after each epoch) or ``metric``
    (after each epoch, given the monitored value: ReduceLROnPlateau). During the first
    ``warmup_steps`` optimizer steps every group's lr rises linearly to what the scheduler says;
    the scheduler's own clock starts after the warm-up (epoch and metric steps that fall inside it
    still apply, to the target the warm-up rises to).
    """

    def __init__(self, scheduler: Any, interval: str, optimizer: torch.optim.Optimizer, warmup_steps: int = 0) -> None:
        self.scheduler, self.interval, self.optimizer = scheduler, interval, optimizer
        self.warmup_steps, self.warm = max(0, int(warmup_steps)), 0
        self.targets = [g["lr"] for g in optimizer.param_groups]
        self._apply_warmup()

    @property
    def warming(self) -> bool:
        return self.warm < self.warmup_steps

    def _apply_warmup(self) -> None:
        if self.warmup_steps:
            f = min(1.0, (self.warm + 1) / (self.warmup_steps + 1))
            for g, t in zip(self.optimizer.param_groups, self.targets):
                g["lr"] = t * f

    def _step_under_warmup(self, *args: Any) -> None:
        for g, t in zip(self.optimizer.param_groups, self.targets):
            g["lr"] = t
        self.scheduler.step(*args)
        self.targets = [g["lr"] for g in self.optimizer.param_groups]
        self._apply_warmup()

    def after_step(self) -> None:
        if self.warming:
            self.warm += 1
            self._apply_warmup()
        elif self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, metric: float) -> None:
        args = (metric,) if self.interval == "metric" else ()
        if self.interval == "step":
            return
        if self.warming:
            self._step_under_warmup(*args)
        else:
            self.scheduler.step(*args)

    def stretch(self, extra_steps: int) -> bool:
        """The run's remaining length changed by ``extra_steps`` optimizer steps (a re-planned time budget):
        True when the scheduler follows (a per-step LambdaLR of :class:`Stretchable` rules, past its warm-up);
        False for any other, whose length is fixed once built."""
        rules = getattr(self.scheduler, "lr_lambdas", None)
        if self.warming or self.interval != "step" or not rules or not all(isinstance(r, Stretchable) for r in rules):
            return False
        rules = list({id(r): r for r in rules}.values())  # one rule given for every param group is one object
        step = self.scheduler.last_epoch
        if not all(r.total + extra_steps > max(step, r.at) for r in rules):
            return False
        return all(r.stretch(step, extra_steps) for r in rules)

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "warm": self.warm, "targets": list(self.targets)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.warm, self.targets = int(state["warm"]), list(state["targets"])

    @property
    def name(self) -> str:
        return type(self.scheduler).__name__ + (
            f" after {self.warmup_steps} warm-up steps" if self.warmup_steps else ""
        )

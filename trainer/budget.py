"""``trainer.time_budget``: a run planned to end within a wall-clock budget (``90s``, ``10m``, ``1h30m``).

Before training, a few optimizer steps of each kind of stage the run may use are timed (all layers;
the head only where the plan has a head stage), one pass over a few validation batches is timed and
scaled to the whole split, and one checkpoint is serialized; the model, optimizer and random streams
are then put back exactly as they were, so the run trains as if nothing had been measured. From
what is left of the budget (the time since the command started is already spent) and the cost of an
epoch, the number of epochs, the head stage's share (``finetune.head_epochs: auto``) and so the
schedule's length are chosen. With ``trainer.epochs`` also given on the command line, the budget is a
cap: never more epochs than that. The chosen plan is kept in every checkpoint, so a resumed run
continues the same plan instead of measuring again.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("trainer")

STARTED = time.monotonic()  # as the command started (mark_start): the budget counts the start-up too
SLACK = 0.05  # an epoch may end this far past the budget before the run stops early instead
MARGIN = 0.03  # of the budget, kept for what is not timed (the run's summary, the exit)
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def mark_start() -> None:
    global STARTED
    STARTED = time.monotonic()


def parse_duration(value: Any) -> float | None:
    """Seconds of ``90``, ``90s``, ``10m``, ``1h30m``, ``1.5h``; None for null/off; ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "off")):
        return None
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text or len({u for _, u in parts}) != len(parts):
                raise ValueError(value)
            seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if not 0 < seconds < 366 * 24 * 3600:
        raise ValueError(value)
    return seconds


@dataclass
class BudgetPlan:
    """What was chosen, and the measurements it was chosen from (saved in each checkpoint)."""

    budget_s: float
    epochs: int
    head_epochs: int
    spent_s: float  # before training: start-up and the measurements
    all_step_s: float
    head_step_s: float | None
    eval_s: float
    save_s: float
    steps_per_epoch: int
    cap: int | None = None  # trainer.epochs, when given with the budget
    stop_reason: str = ""  # set when the run stops early to keep within the budget
    used_s: float = 0.0  # wall-clock seconds used so far, all sessions (at the last epoch's end)
    resumed_from_s: float = 0.0  # what earlier sessions used, for a resumed run

    def epoch_s(self, head: bool) -> float:
        step = self.head_step_s if head and self.head_step_s is not None else self.all_step_s
        return step * self.steps_per_epoch + self.eval_s + self.save_s

    @property
    def planned_s(self) -> float:
        return (
            self.spent_s
            + self.head_epochs * self.epoch_s(True)
            + (self.epochs - self.head_epochs) * self.epoch_s(False)
        )

    def lines(self) -> list[str]:
        from trainer.plan import _duration

        cap = self.cap
        head = f", {self.head_step_s:.3f} s (head only)" if self.head_step_s is not None else ""
        why = f"trainer.epochs={cap} caps it" if cap is not None and self.epochs == cap else "what fits"
        return [
            f"time budget {_duration(self.budget_s)}: {_duration(self.spent_s)} spent on start-up and timing; an "
            f"optimizer step {self.all_step_s:.3f} s (all layers){head}, {self.steps_per_epoch} an epoch; evaluation "
            f"{self.eval_s:.1f} s and a checkpoint {self.save_s:.1f} s an epoch",
            f"time budget: {self.epochs} epoch(s) ({why}), {self.head_epochs} of them head only; planned to end "
            f"after ~{_duration(self.planned_s)} of the {_duration(self.budget_s)}",
        ]

    def out_of_time(self, epochs_done: int, now: float | None = None) -> bool:
        """After an epoch: would one more, at the wall-clock pace of the epochs so far (their saves and
        logging included), end past the budget by more than the slack? A machine slower than when it was
        timed then stops early instead of overrunning."""
        self.used_s = self.resumed_from_s + ((time.monotonic() if now is None else now) - STARTED)
        if epochs_done < 1:
            return False
        per_epoch = max(0.0, self.used_s - self.spent_s) / epochs_done
        if self.used_s + per_epoch <= self.budget_s * (1 + SLACK):
            return False
        from trainer.plan import _duration

        self.stop_reason = (
            f"the time budget ({_duration(self.budget_s)}) has no room for another epoch of ~{_duration(per_epoch)} "
            f"(~{_duration(self.used_s)} used); the run counts as finished"
        )
        return True

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Any) -> BudgetPlan | None:
        if not isinstance(state, dict):
            return None
        try:
            return cls(**{k: state[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None


def choose_epochs(
    remaining_s: float, all_epoch_s: float, head_epoch_s: float, head_rule: Any, cap: int | None
) -> tuple[int, int]:
    """(epochs, head epochs) that fit ``remaining_s``: the most epochs whose head share (``head_rule(epochs)``)
    and the rest fit, at least 1, at most ``cap``."""
    best = (1, min(head_rule(1), 0))
    for epochs in range(1, (cap or 100_000) + 1):
        head = min(head_rule(epochs), epochs)
        cost = head * head_epoch_s + (epochs - head) * all_epoch_s
        if cost > remaining_s:
            break
        best = (epochs, head)
    return best


def plan_budget(run: Any, budget_s: float, cap: int | None, head_rule: Any, head_fixed: bool) -> BudgetPlan:
    """Time the run's steps, evaluation and a save, put everything back, and choose the plan."""
    from trainer.checkpoint import rng_state, set_rng_state
    from trainer.stages import plan_stages

    saved_model = copy.deepcopy(run.model.state_dict())
    saved_scaler = copy.deepcopy(run.scaler.state_dict())
    saved_rng = rng_state()
    stages = run.plan.stages
    try:
        all_step = _time_stage(run, plan_stages(None, 0, 1))
        eval_s = _time_eval(run)
        save_s = _time_save(run)
        all_epoch = all_step * run.steps_per_epoch + eval_s + save_s
        head_step = None
        remaining = budget_s * (1 - MARGIN) - (time.monotonic() - STARTED)
        if head_fixed or head_rule(choose_epochs(remaining, all_epoch, all_epoch, lambda e: 0, cap)[0]) > 0:
            head_step = _time_stage(run, plan_stages(None, 1, 2))  # the plan will hold a head stage: time it too
    finally:
        run.model.load_state_dict(saved_model)
        run.scaler.load_state_dict(saved_scaler)
        set_rng_state(saved_rng)
        run.plan.stages = stages
        run.global_step = 0
    spent = time.monotonic() - STARTED
    remaining = budget_s * (1 - MARGIN) - spent
    head_epoch = (head_step if head_step is not None else all_step) * run.steps_per_epoch + eval_s + save_s
    epochs, head = choose_epochs(remaining, all_epoch, head_epoch, head_rule, cap)
    return BudgetPlan(budget_s, epochs, head, spent, all_step, head_step, eval_s, save_s, run.steps_per_epoch, cap)


def _time_stage(run: Any, stages: list[Any]) -> float:
    """Seconds an optimizer step of ``stages[0]`` takes (the estimate's timed steps), or of the steps there were."""
    from trainer.plan import MEASURED_STEPS, WARMUP_STEPS

    run.plan.stages = stages
    run.enter_stage(0)
    micro, steps, t0 = 0, 0, 0.0
    for _ in range(WARMUP_STEPS + MEASURED_STEPS):  # passes over the data: more than one when an epoch is short
        for x, y, *_ in run.inputs.train(0, 0):
            if x.shape[0] == 0:
                continue
            run.step.backward(x, y)
            micro += 1
            if micro % run.accumulate:
                continue
            run.step.update()
            steps += 1
            if steps == WARMUP_STEPS:
                t0 = run.estimate._now()
            if steps == WARMUP_STEPS + MEASURED_STEPS:
                return (run.estimate._now() - t0) / MEASURED_STEPS
    raise RuntimeError("trainer.time_budget: no optimizer step could be timed (every batch was empty)")


def _time_save(run: Any) -> float:
    """Seconds one epoch-end checkpoint takes (its digest, write, fsync), written to a temporary folder."""
    import tempfile
    from pathlib import Path

    from trainer.checkpoint import save_checkpoint

    t0 = time.perf_counter()
    state = run.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(state, Path(tmp) / "timed.pt")
    return time.perf_counter() - t0


def _time_eval(run: Any, batches: int = 4) -> float:
    """Seconds a whole evaluation takes, from its first ``batches`` batches (after one untimed batch)."""
    import torch

    n = len(run.loaders.val)
    run.model.eval()
    times: list[float] = []
    with torch.no_grad():
        t0 = run.estimate._now()
        for x, _y, *_ in run.inputs.val():
            with run.autocast():
                run.forward.evaluate(x)
            times.append(run.estimate._now() - t0)
            t0 = run.estimate._now()
            if len(times) == batches + 1:
                break
    per_batch = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else sum(times)  # the first one warms up
    return per_batch * n + 0.05 * math.log2(n + 1)  # the metrics' compute and the host syncs of an epoch's end

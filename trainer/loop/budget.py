"""``trainer.time_budget``: a run planned to end within a wall-clock budget (``90s``, ``10m``, ``1h30m``).

Before training, a few optimizer steps of each kind of stage the run may use are timed (all layers;
the head only where the plan has a head stage), one pass over a few validation batches is timed and
scaled to the whole split, and one checkpoint is serialized; the model, optimizer and random streams
are then put back exactly as they were, so the run trains as if nothing had been measured. From
what is left of the budget (the time since the command started is already spent) and the cost of an
epoch, the number of epochs, the head stage's share (``finetune.head_epochs: auto``) and so the
schedule's length are chosen. The rest is planned again from the pace the run trains at, a fifth, two
and three fifths into the first epoch of the last stage and into the last epoch (the epoch's pace
weighed with the timed one, so one noisy window cannot cut the run), and after each epoch (unless the
plan as it stands already ends within 1.5% of the target), longer or shorter, with the schedule
stretched from where it is (:meth:`BudgetPlan.replan`). With ``trainer.epochs`` also given on the command line, the budget is
a cap: never more epochs than that. The chosen plan is kept in every checkpoint, so a resumed run
continues the same plan instead of measuring again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from trainer.loop.policies import Length, Policy
from trainer.loop.stages import batches_in, resized
from trainer.loop.state import TrainState

if TYPE_CHECKING:
    from trainer.loop.run import Run

log = logging.getLogger("trainer")

SLACK = 0.05  # an epoch may end this far past the budget before the run stops early instead
MARGIN = 0.03  # of the budget, kept for what is not timed (the run's summary, the exit)
KEEP = 0.015  # of the budget: a plan whose end, at the pace measured, is this close to the target stays as it is


class Clock:
    """Seconds since the command (or a sweep's job) started: what a time budget counts, start-up included.
    Made where the command starts and passed in; ``source`` gives the time (tests pass their own)."""

    def __init__(self, started: float | None = None, source: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.started = source() if started is None else started

    def __call__(self) -> float:
        return self.source() - self.started


def _duration(seconds: float) -> str:
    """Seconds up to ten minutes, then the plan's own rounding (a budget of 100 s is not "2 min")."""
    from trainer.loop.estimate import _duration as rounded

    return f"{seconds:.0f} s" if seconds < 600 else rounded(seconds)


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
    total_steps: int | None = None  # optimizer steps in all: the last epoch cut short to fit (None: every epoch whole)
    stop_reason: str = ""  # set when the run stops early to keep within the budget
    used_s: float = 0.0  # wall-clock seconds used so far, all sessions (at the last epoch's end)
    resumed_from_s: float = 0.0  # what earlier sessions used, for a resumed run
    replanned: list[dict[str, Any]] = field(default_factory=list)  # each time replan changed the plan: what and why

    def epoch_s(self, head: bool) -> float:
        step = self.head_step_s if head and self.head_step_s is not None else self.all_step_s
        return step * self.steps_per_epoch + self.eval_s + self.save_s

    @property
    def planned_s(self) -> float:
        head, rest = self.head_epochs * self.epoch_s(True), (self.epochs - self.head_epochs) * self.epoch_s(False)
        return self.spent_s + head + rest - (self.epochs * self.steps_per_epoch - self.steps) * self.all_step_s

    @property
    def steps(self) -> int:
        return self.total_steps if self.total_steps is not None else self.epochs * self.steps_per_epoch

    def batches_in(self, epoch: int, batches_per_epoch: int, accumulate: int) -> int:
        """Batches epoch ``epoch`` (0-based) trains: all, or in the shortened last epoch what its steps take."""
        return batches_in(epoch, self.steps, self.steps_per_epoch, batches_per_epoch, accumulate)

    def shorten(self, stages: list[Any]) -> list[Any]:
        """The stages, the last one told its steps when the last epoch is cut short (its schedule ends there)."""
        return resized(stages, self.epochs, self.steps, self.steps_per_epoch) if stages else stages

    def lines(self) -> list[str]:

        cap = self.cap
        head = f", {self.head_step_s:.3f} s (head only)" if self.head_step_s is not None else ""
        why = f"trainer.epochs={cap} caps it" if cap is not None and self.epochs == cap else "what fits"
        if self.steps < self.epochs * self.steps_per_epoch:
            cut = self.steps - (self.epochs - 1) * self.steps_per_epoch
            why += f", the last one cut to {cut} of its {self.steps_per_epoch} steps"
        return [
            f"time budget {_duration(self.budget_s)}: {_duration(self.spent_s)} spent on start-up and timing; an "
            f"optimizer step {self.all_step_s:.3f} s (all layers){head}, {self.steps_per_epoch} an epoch; evaluation "
            f"{self.eval_s:.1f} s and a checkpoint {self.save_s:.1f} s an epoch",
            f"time budget: {self.epochs} epoch(s) ({why}), {self.head_epochs} of them head only; planned to end "
            f"after ~{_duration(self.planned_s)} of the {_duration(self.budget_s)}",
        ]

    def out_of_time(self, epochs_done: int, elapsed: float) -> bool:
        """After an epoch (``elapsed`` seconds since the start): would one more, at the wall-clock pace of
        the epochs so far (their saves and logging included), end past the budget by more than the slack?
        A machine slower than when it was timed then stops early instead of overrunning."""
        self.used_s = self.resumed_from_s + elapsed
        if epochs_done < 1:
            return False
        per_epoch = max(0.0, self.used_s - self.spent_s) / epochs_done
        share = min(1.0, max(0, self.steps - epochs_done * self.steps_per_epoch) / self.steps_per_epoch)
        end_s = self.eval_s + self.save_s
        per_epoch = share * per_epoch + (1 - share) * min(per_epoch, end_s)  # the next one may be a short one
        if self.used_s + per_epoch <= self.budget_s * (1 + SLACK):
            return False

        self.stop_reason = (
            f"the time budget ({_duration(self.budget_s)}) has no room for another epoch of ~{_duration(per_epoch)} "
            f"(~{_duration(self.used_s)} used); the run counts as finished"
        )
        return True

    def replan(self, state: TrainState, length: Length, elapsed: float) -> None:
        """After an epoch of the last stage, while its schedule still has steps to go: the rest of the run
        planned again at the wall-clock pace of this session's epochs (their evaluation and saves included),
        so a machine faster or slower than when it was timed still ends near the budget. The schedule is
        stretched (or shrunk) from where it is (:meth:`Schedule.stretch`); one whose length is fixed once
        built keeps the plan, and the run can only stop early (:meth:`out_of_time`)."""
        done, spe = state.epoch, self.steps_per_epoch
        epochs_now = done - getattr(self, "_session_epoch", done)  # start_session not called: no pace yet
        if epochs_now < 1 or done >= self.epochs or not length.in_last_stage():
            return
        end_s = self.eval_s + self.save_s
        per_epoch = (elapsed - self._session_t0) / epochs_now
        pace = max(0.25 * self.all_step_s, (per_epoch - end_s) / spe)
        used = self.resumed_from_s + elapsed
        remaining = self.budget_s * (1 - MARGIN) - used
        if remaining < end_s + pace * max(1, spe // 10):  # not even a short epoch: out_of_time decides
            return
        if self._lands(used + (self.steps - done * spe) * pace + (self.epochs - done) * end_s):
            return  # no change for the noise in one epoch's pace
        cap = None if self.cap is None else self.cap - done
        more, _, steps = choose_steps(remaining, spe, (pace, pace), end_s, lambda e: 0, cap)
        self._change(
            length, done, more, done * spe + steps, pace, f"after epoch {done}", used + steps * pace + more * end_s
        )

    def replan_midway(self, length: Length, epoch: int, done: int, epoch_s: float, elapsed: float) -> None:
        """A fifth, two fifths and three fifths into the session's first epoch of the last stage, and into the
        run's last planned epoch (``done`` optimizer steps of it in ``epoch_s`` seconds): the rest planned
        again, so a run of one or two epochs, which :meth:`replan` sees too late, still fills its budget, and
        a pace that changes in the last epoch still moves its end, longer as well as shorter. The pace is
        this epoch's so far weighed with the timed one as if that were a fifth of an epoch's steps
        (:func:`blended_pace`): one noisy window cannot cut the run, and the later points trust the epoch more."""
        first = self.__dict__.setdefault("_midway_first", epoch)  # the session's first epoch planned midway
        if not length.in_last_stage() or epoch not in (first, self.epochs - 1):
            return
        spe, end_s = self.steps_per_epoch, self.eval_s + self.save_s
        pace = blended_pace(self.all_step_s, midway_steps(spe), done, epoch_s)
        used = self.resumed_from_s + elapsed
        if self._lands(used + (self.steps - epoch * spe - done) * pace + (self.epochs - epoch) * end_s):
            return
        # as if this epoch were starting now with the time its steps so far took given back
        remaining = self.budget_s * (1 - MARGIN) - used + done * pace
        cap = None if self.cap is None else self.cap - epoch
        more, _, steps = choose_steps(remaining, spe, (pace, pace), end_s, lambda e: 0, cap)
        steps = max(steps, done + 1)
        end = used + (steps - done) * pace + more * end_s
        self._change(length, epoch, more, epoch * spe + steps, pace, f"{done} steps into epoch {epoch + 1}", end, done)

    def _lands(self, end_s: float) -> bool:
        """Does the plan as it stands, ending ``end_s`` after the start at the pace measured, end within
        ``KEEP`` of the budget of its target? Then it is kept."""
        return abs(end_s - self.budget_s * (1 - MARGIN)) <= KEEP * self.budget_s

    def _change(
        self, length: Length, epoch: int, more: int, total: int, pace: float, when: str, end_s: float, into: int = 0
    ) -> None:
        """The run becomes ``epoch + more`` epochs and ``total`` optimizer steps (its schedule stretched to
        it, through :meth:`Length.resize`), and this plan says so."""
        spe = self.steps_per_epoch
        if total == self.steps or not length.resize(epoch + more, total):
            return
        self.replanned.append(
            {
                "after_epoch": epoch, "into_epoch": into, "step_s": round(pace, 4),
                "epochs": [self.epochs, epoch + more], "steps": [self.steps, total],
            }
        )  # fmt: skip
        self.epochs, self.total_steps = epoch + more, (total if total < (epoch + more) * spe else None)
        cut = f", the last cut to {total - (self.epochs - 1) * spe} of its {spe} steps" if self.total_steps else ""
        log.info(
            "time budget: planned again %s at the pace measured, %.3f s a step (timed: %.3f): %d epoch(s)%s; "
            "to end after ~%s of the %s",
            when, pace, self.all_step_s, self.epochs, cut, _duration(end_s), _duration(self.budget_s),
        )  # fmt: skip

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def resumed(cls, checkpoint: dict[str, Any]) -> BudgetPlan | None:
        """The plan a checkpoint's run was trained with, to continue (None: it had no budget)."""
        plan = cls.from_state(checkpoint.get("budget"))
        if plan is not None:
            plan.resumed_from_s, plan.stop_reason = plan.used_s, ""
            log.info(
                "time budget: the resumed run's own plan, %d epoch(s), %d head only", plan.epochs, plan.head_epochs
            )
        return plan

    def start_session(self, epoch: int, elapsed: float) -> None:
        """Training starts (or resumes) at ``epoch``, ``elapsed`` seconds after the start: :meth:`replan`
        measures the pace from here."""
        self._session_t0, self._session_epoch = elapsed, epoch

    @classmethod
    def from_state(cls, state: Any) -> BudgetPlan | None:
        if not isinstance(state, dict):
            return None
        try:  # a field added later (with its default) may be missing from an older checkpoint's plan
            plan = cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state or k not in OPTIONAL})
        except (KeyError, TypeError):
            return None
        return plan if isinstance(plan.replanned, list) else None


OPTIONAL = {"replanned"}


def midway_steps(steps_per_epoch: int) -> int:
    """Steps between the points inside an epoch where a budget is planned again (a fifth of an epoch, at least 5)."""
    return max(5, steps_per_epoch // 5)


MIDWAY_POINTS = 3  # a fifth, two and three fifths into an epoch: later, too little of the schedule is left to move


def blended_pace(timed_s: float, prior_steps: int, done: int, seconds: float) -> float:
    """Seconds a step: ``done`` steps in ``seconds``, weighed with ``prior_steps`` steps at the timed pace.
    Never below a quarter of the timed pace (a clock that jumped)."""
    return max(0.25 * timed_s, (timed_s * prior_steps + seconds) / (prior_steps + max(1, done)))


def choose_steps(
    remaining_s: float,
    steps_per_epoch: int,
    step_s: tuple[float, float],
    epoch_end_s: float,
    head_rule: Callable[[int], int],
    cap: int | None,
) -> tuple[int, int, int]:
    """(epochs, head epochs, optimizer steps in all) that fill ``remaining_s``: whole epochs while they fit,
    then a last one cut short (to no less than a tenth of it); each epoch, the last included, pays ``epoch_end_s``
    (evaluation and a save). ``step_s``: (all layers, head only) seconds a step. At least one epoch
    (a whole one when not even a step fits); at most ``cap`` epochs. ``head_rule(epochs)``: the head-only epochs of a run that long."""
    all_s, head_s = step_s
    best = (1, min(head_rule(1), 1), steps_per_epoch)
    for epochs in range(1, (cap or 100_000) + 1):
        head = min(head_rule(epochs), epochs)
        left = remaining_s - epochs * epoch_end_s - head * steps_per_epoch * head_s
        if head == epochs:  # every epoch head only: whole epochs
            if left < 0:
                break
            best = (epochs, head, epochs * steps_per_epoch)
            continue
        can = int(left // all_s) if all_s > 0 else 10**12
        whole = (epochs - head) * steps_per_epoch
        if can < whole - steps_per_epoch + max(1, steps_per_epoch // 10):  # not a tenth of this epoch fits
            break
        best = (epochs, head, head * steps_per_epoch + min(can, whole))
        if can < whole:  # this epoch is the shortened last one
            break
    return best


def plan_budget(
    run: Run, budget_s: float, cap: int | None, head_rule: Any, head_fixed: bool, clock: Clock
) -> BudgetPlan:
    """Time the run's steps, evaluation and a save, put everything back, and choose the plan."""
    from trainer.loop.stages import plan_stages
    from trainer.loop.trial import trial

    stages = run.plan.stages
    with trial(run.model, run.scaler):
        all_step = _time_stage(run, plan_stages(None, 0, 1))
        eval_s = _time_eval(run)
        save_s = _time_save(run)
        head_step = None
        remaining = budget_s * (1 - MARGIN) - clock()
        plain = choose_steps(remaining, run.steps_per_epoch, (all_step, all_step), eval_s + save_s, lambda e: 0, cap)
        if head_fixed or head_rule(plain[0]) > 0:
            head_step = _time_stage(run, plan_stages(None, 1, 2))  # the plan will hold a head stage: time it too
    run.plan.stages = stages  # the measurement's own stages and steps taken back
    run.state.global_step = 0
    spent = clock()
    remaining = budget_s * (1 - MARGIN) - spent
    step_s = (all_step, head_step if head_step is not None else all_step)
    epochs, head, steps = choose_steps(remaining, run.steps_per_epoch, step_s, eval_s + save_s, head_rule, cap)
    total = steps if steps < epochs * run.steps_per_epoch else None
    return BudgetPlan(
        budget_s, epochs, head, spent, all_step, head_step, eval_s, save_s, run.steps_per_epoch, cap, total
    )


def time_epoch(run: Run) -> dict[str, float]:
    """Seconds an epoch of all layers takes (its steps, evaluation and checkpoint), timed as a budget
    times them and put back: what a race plans with (``race.pace``)."""
    from trainer.loop.stages import plan_stages
    from trainer.loop.trial import trial

    stages = run.plan.stages
    with trial(run.model, run.scaler):
        step_s = _time_stage(run, plan_stages(None, 0, 1))
        eval_s, save_s = _time_eval(run), _time_save(run)
    run.plan.stages = stages
    run.state.global_step = 0
    return {
        "step_s": step_s,
        "eval_s": eval_s,
        "save_s": save_s,
        "epoch_s": step_s * run.steps_per_epoch + eval_s + save_s,
    }


def _time_stage(run: Run, stages: list[Any]) -> float:
    """Seconds an optimizer step of ``stages[0]`` takes (the estimate's timed steps)."""
    from trainer.loop.estimate import MEASURED_STEPS, WARMUP_STEPS, time_steps

    run.plan.stages = stages
    run.enter_stage(0)
    # while the loader workers fill their queues (prefetch) they take CPU from the steps: not counted
    loader = run.loaders.train
    prefetch = getattr(loader, "prefetch_factor", None) or getattr(
        getattr(loader, "loader", None), "prefetch_factor", 0
    )
    burst = int(getattr(loader, "num_workers", 0) or 0) * int(prefetch or 0)
    run.estimate.warmup = WARMUP_STEPS + burst
    try:
        per = time_steps(run, passes=run.estimate.warmup + MEASURED_STEPS, quiet=True)
    finally:
        run.estimate.warmup = WARMUP_STEPS
    if per is None:
        raise RuntimeError("trainer.time_budget: no optimizer step could be timed (every batch was empty)")
    return per


def _time_save(run: Run) -> float:
    """Seconds one epoch-end checkpoint takes (its digest, write, fsync), written to a temporary folder."""
    import tempfile
    from pathlib import Path

    from trainer.runs.checkpoint import save_checkpoint

    t0 = time.perf_counter()
    state = run.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(state, Path(tmp) / "timed.pt")
    return time.perf_counter() - t0


def _time_eval(run: Run, batches: int = 4) -> float:
    """Seconds a whole evaluation takes, from its first ``batches`` batches (after one untimed batch)."""
    import torch

    n = len(run.loaders.val)
    run.model.eval()
    times: list[float] = []
    with torch.no_grad():
        t0 = run.estimate.now()
        for x, _y, *_ in run.inputs.val():
            with run.eval_autocast():
                run.forward.evaluate(x)
            times.append(run.estimate.now() - t0)
            t0 = run.estimate.now()
            if len(times) == batches + 1:
                break
    per_batch = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else sum(times)  # the first one warms up
    return per_batch * n + 0.05 * math.log2(n + 1)  # the metrics' compute and the host syncs of an epoch's end


class TimeBudget(Policy):
    """trainer.time_budget as a policy: the plan followed and planned again from the pace (a fifth, two
    and three fifths into an epoch, after each epoch), and the run stopped when another epoch would overrun."""

    def __init__(self, plan: BudgetPlan, clock: Clock) -> None:
        self.plan, self.clock = plan, clock

    def fit_start(self, state: TrainState) -> None:
        self.plan.start_session(state.epoch, self.clock())

    def step_end(self, state: TrainState, length: Length, epoch: int, steps: int, seconds: float) -> None:
        every = midway_steps(length.steps_per_epoch)
        if steps % every == 0 and steps // every <= MIDWAY_POINTS and steps < length.steps_per_epoch:
            self.plan.replan_midway(length, epoch, steps, seconds, self.clock())

    def epoch_end(self, state: TrainState, length: Length) -> None:
        self.plan.replan(state, length, self.clock())

    def stop_reason(self, state: TrainState) -> str | None:
        return self.plan.stop_reason if self.plan.out_of_time(state.epoch, self.clock()) else None

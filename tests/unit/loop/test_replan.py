"""A time budget planned again from the measured pace: the schedule stretched from where it is (no jump
in the lr, the same end), the new length what the pace allows, and what cannot stretch left alone."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch

from trainer.loop import budget
from trainer.loop.budget import MARGIN, BudgetPlan, choose_steps
from trainer.loop.run import Run
from trainer.loop.schedules import LambdaRule, WarmupCosine, build_schedule, onecycle, warmup_cosine
from trainer.loop.stages import Stage
from trainer.loop.state import TrainState


def _cosine(step, total, warmup, low):  # the rule written out by hand, before any stretch
    if step < warmup:
        return (step + 1) / (warmup + 1)
    p = min(1.0, (step - warmup) / (total - warmup))
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * p))


def test_a_stretched_cosine_goes_on_from_its_lr_and_ends_at_its_floor():
    rule = WarmupCosine(total=100, warmup=10, min_ratio=0.01)
    assert [rule(s) for s in range(0, 100, 7)] == pytest.approx([_cosine(s, 100, 10, 0.01) for s in range(0, 100, 7)])
    before = rule(40)
    assert rule.stretch(40, 60)  # 60 more steps: the run now ends at 160
    assert rule(40) == pytest.approx(before)  # no jump where it was stretched
    assert rule(160) == pytest.approx(0.01) and rule(200) == pytest.approx(0.01)
    # halfway through what was left, the progress is halfway between the knot's and the end
    p40 = (40 - 10) / 90
    assert rule(100) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (p40 + 1) / 2)))
    lrs = [rule(s) for s in range(40, 161)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # still decaying, never back up
    assert rule.stretch(100, -30)  # shrunk later: ends at 130 instead
    assert rule(130) == pytest.approx(0.01) and rule(100) == pytest.approx(lrs[60])
    assert not rule.stretch(120, -20)  # would end before the step it is at
    inside = WarmupCosine(100, 10, 0.0)  # inside its warm-up: the warm-up stays, the cosine's end moves
    assert inside.stretch(5, 10) and inside(5) == pytest.approx(6 / 11) and inside(110) == pytest.approx(0.0)
    assert inside(60) == pytest.approx(_cosine(60, 110, 10, 0.0))
    assert not WarmupCosine(100, 10, 0.0).stretch(5, -95)  # would end inside the warm-up


def test_a_linear_rule_stretches_and_the_others_do_not_depend_on_the_length():
    linear = LambdaRule("linear", total_steps=50, steps_per_epoch=10, end_ratio=0.1)
    before = linear(20)
    assert linear.stretch(20, 50) and linear(20) == pytest.approx(before) and linear(100) == pytest.approx(0.1)
    assert linear(60) == pytest.approx(1 - 0.9 * (0.4 + 0.6 * 0.5))
    step = LambdaRule("step_decay", total_steps=50, steps_per_epoch=10, every=2)
    assert step.stretch(20, 50) and step(45) == pytest.approx(0.1 ** (4 // 2))


def _optimizer():  # two param groups, as a run has (head and backbone): LambdaLR shares one rule between them
    head, backbone = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [head], "lr": 1.0}, {"params": [backbone], "lr": 0.5}], lr=1.0)


def test_the_schedule_stretches_only_a_per_step_stretchable_rule_past_its_warm_up():
    opt = _optimizer()
    sched = build_schedule(functools.partial(warmup_cosine, min_lr_ratio=0.0), opt, 10, 4)
    for _ in range(15):
        sched.after_step()
    lr = opt.param_groups[0]["lr"]
    assert sched.stretch(20)
    for _ in range(40 + 20 - 15):
        sched.after_step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # ends at the new end, 60 steps
    assert sched.scheduler.lr_lambdas[0].total == 60  # stretched once, not once per param group
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    # the knot is plain state: a scheduler built again and loaded from it gives the same lrs
    state = sched.state_dict()
    again = build_schedule(functools.partial(warmup_cosine, min_lr_ratio=0.0), _optimizer(), 10, 4)
    again.load_state_dict(state)
    assert again.scheduler.lr_lambdas[0].total == 60 and again.scheduler.lr_lambdas[0].at == 15
    assert lr > 0
    cycle = build_schedule(functools.partial(onecycle), _optimizer(), 10, 4)
    for _ in range(15):
        cycle.after_step()
    assert not cycle.stretch(20)  # OneCycleLR's length is fixed when built
    warming = build_schedule(functools.partial(warmup_cosine), _optimizer(), 10, 4, warmup_epochs=2)
    assert not warming.stretch(20)  # inside the schedule's own warm-up


class _Length:
    """What a run shows a policy (policies.Length), by Run's own methods over the parts they read: its
    state, its stages and its schedule."""

    in_last_stage, resize, total_steps = Run.in_last_stage, Run.resize, Run.total_steps

    def __init__(self, plan: BudgetPlan, epoch: int, stages: list[Stage], schedule) -> None:
        self.state = TrainState(epochs=plan.epochs, epoch=epoch, stage_idx=len(stages) - 1)
        self.plan, self.schedule, self.steps_per_epoch = SimpleNamespace(stages=stages), schedule, plan.steps_per_epoch


def _run(plan: BudgetPlan, epoch: int, stages: list[Stage], schedule) -> _Length:
    return _Length(plan, epoch, stages, schedule)


def _plan(**kw) -> BudgetPlan:
    base = dict(
        budget_s=200, epochs=4, head_epochs=0, spent_s=10, all_step_s=1.0, head_step_s=None, eval_s=2, save_s=0,
        steps_per_epoch=10,
    )  # fmt: skip
    return BudgetPlan(**{**base, **kw})


def _stepped(epochs_done: int, steps_per_epoch: int = 10):
    opt = _optimizer()
    sched = build_schedule(functools.partial(warmup_cosine), opt, steps_per_epoch, 4)
    for _ in range(epochs_done * steps_per_epoch):
        sched.after_step()
    return sched


def test_a_faster_run_is_given_more_steps_and_a_slower_one_fewer():
    # timed 1 s a step, planned 4 epochs of 12 s; the first epoch took 8 s (0.6 s a step + 2 s evaluation)
    fast = _plan()
    fast.start_session(0, 10)
    run = _run(fast, 1, [Stage(0, 4, "all")], _stepped(1))
    fast.replan(run.state, run, 18)
    left = 200 * (1 - MARGIN) - 18
    more, _, steps = choose_steps(left, 10, (0.6, 0.6), 2.0, lambda e: 0, None)
    assert (fast.epochs, fast.steps) == (1 + more, 10 + steps) and fast.epochs > 4  # by hand: the pace allows more
    assert run.state.epochs == fast.epochs and run.plan.stages[-1].epochs == fast.epochs
    assert fast.replanned[-1] == {
        "after_epoch": 1,
        "into_epoch": 0,
        "step_s": 0.6,
        "epochs": [4, fast.epochs],
        "steps": [40, fast.steps],
    }
    assert run.schedule.scheduler.lr_lambdas[0].total == fast.steps  # the schedule now ends with the run
    # the same plan on a machine slower than timed: the first epoch took 40 s (3.8 s a step)
    slow = _plan(budget_s=100)
    slow.start_session(0, 10)
    run = _run(slow, 1, [Stage(0, 4, "all")], _stepped(1))
    slow.replan(run.state, run, 50)
    more, _, steps = choose_steps(100 * (1 - MARGIN) - 50, 10, (3.8, 3.8), 2.0, lambda e: 0, None)
    assert (slow.epochs, slow.steps) == (1 + more, 10 + steps) == (3, 21)  # the third epoch cut to 1 step
    assert (
        run.plan.stages[-1].steps == slow.steps and slow.batches_in(slow.epochs - 1, 10, 1) == steps - (more - 1) * 10
    )


def test_what_replan_leaves_alone():
    capped = _plan(cap=4)  # trainer.epochs=4 caps it: a fast machine does not add epochs
    capped.start_session(0, 10)
    run = _run(capped, 1, [Stage(0, 4, "all")], _stepped(1))
    capped.replan(run.state, run, 18)
    assert (capped.epochs, capped.steps, capped.replanned) == (4, 40, [])
    head = _plan(head_epochs=1)  # still in the head stage: its pace says nothing of the all-layers steps
    head.start_session(0, 0)
    run = _run(head, 1, [Stage(0, 1, "head"), Stage(1, 3, "all")], _stepped(1))
    run.state.stage_idx = 0
    head.replan(run.state, run, 18)
    assert head.replanned == []
    fixed = _plan()  # a scheduler whose length is fixed once built
    fixed.start_session(0, 10)
    cycle = build_schedule(functools.partial(onecycle), _optimizer(), 10, 4)
    run = _run(fixed, 1, [Stage(0, 4, "all")], cycle)
    fixed.replan(run.state, run, 18)
    assert (fixed.epochs, fixed.replanned) == (4, [])
    resumed = _plan()  # a resumed session with no epoch of its own yet: no pace to go by
    resumed.start_session(2, 0)
    run = _run(resumed, 2, [Stage(0, 4, "all")], _stepped(2))
    resumed.replan(run.state, run, 40)
    assert resumed.replanned == []


def test_a_plan_that_lands_close_enough_is_kept():
    """Planned 4 epochs of 10 steps (2 s evaluation each) in 200 s. At 4.42 s a step the plan as it stands
    ends 0.8 s past the target of 194 s (the budget less its margin), within 1.5% of the budget: kept,
    although choose_steps would cut a step. At 4 s a step it ends 16 s early: planned again."""
    for pace, kept in ((4.42, True), (4.0, False)):
        plan = _plan()
        plan.start_session(0, 10)
        now = 10 + 10 * pace + 2
        run = _run(plan, 1, [Stage(0, 4, "all")], _stepped(1))
        plan.replan(run.state, run, now)
        as_planned = now + 30 * pace + 3 * 2
        assert abs(as_planned - 200 * (1 - MARGIN)) <= budget.KEEP * 200 if kept else as_planned < 190
        more, _, steps = choose_steps(200 * (1 - MARGIN) - now, 10, (pace, pace), 2.0, lambda e: 0, None)
        assert (10 + steps != 40) and (plan.steps == 40 if kept else plan.steps == 10 + steps)
        assert (plan.replanned == []) is kept


def test_an_older_checkpoints_plan_without_the_replan_record_still_loads():
    state = _plan().to_state()
    del state["replanned"]
    plan = BudgetPlan.from_state(state)
    assert plan is not None and plan.replanned == [] and plan.epochs == 4
    assert BudgetPlan.from_state({**state, "replanned": "x"}) is None


def test_a_fifth_into_the_first_epoch_the_plan_follows_that_pace_weighed_with_the_timed_one():
    """A run planned at 1 epoch cut to 65 of 75 steps (timed 0.678 s a step) that trains at 0.44 s:
    replan after an epoch would come too late, so 15 steps in (a fifth), the rest is planned at the
    epoch's pace weighed with the timed one as if that were 15 steps: (0.678 * 15 + 6.6) / 30 = 0.559 s."""
    plan = _plan(budget_s=70, epochs=1, all_step_s=0.678, eval_s=2.2, save_s=0.5, steps_per_epoch=75, total_steps=65)
    sched = build_schedule(functools.partial(warmup_cosine), _optimizer(), 75, 1, total_steps=65)
    for _ in range(15):
        sched.after_step()
    run = _run(plan, 0, plan.shorten([Stage(0, 1, "all")]), sched)
    plan.replan_midway(run, 0, 15, 6.6, 27.6)  # 21 s start-up + 6.6 s of steps
    pace = (0.678 * 15 + 6.6) / 30
    assert budget.blended_pace(0.678, 15, 15, 6.6) == pytest.approx(pace)
    remaining = 70 * (1 - MARGIN) - 27.6 + 15 * pace
    more, _, steps = choose_steps(remaining, 75, (pace, pace), 2.7, lambda e: 0, None)
    assert (plan.epochs, plan.steps) == (more, steps) and plan.steps > 65  # by hand: more steps now fit
    assert plan.replanned[0]["into_epoch"] == 15 and run.plan.stages[-1].epochs == plan.epochs
    assert plan.replanned[0]["step_s"] == pytest.approx(pace, abs=1e-4)
    assert sched.scheduler.lr_lambdas[0].total == plan.steps


def test_one_slow_window_does_not_cut_the_run_and_later_points_in_the_epoch_lengthen_it_again():
    """Timed 0.423 s a step; the first fifth of epoch 1 runs at 0.782 s (a busy minute), then at 0.40 s.
    Trusting that window alone would plan for a run ~1.85x slower; weighed with the timed pace it is cut
    less, and two fifths in, at the epoch's pace so far (the timed one weighed less), it is lengthened."""
    plan = _plan(budget_s=200, epochs=2, all_step_s=0.423, eval_s=5.0, save_s=0.5, steps_per_epoch=150)
    sched = build_schedule(functools.partial(warmup_cosine), _optimizer(), 150, 2)
    run = _run(plan, 0, plan.shorten([Stage(0, 2, "all")]), sched)
    plan.replan_midway(run, 0, 30, 30 * 0.782, 20 + 30 * 0.782)
    first = plan.steps
    alone = choose_steps(200 * (1 - MARGIN) - 20, 150, (0.782, 0.782), 5.5, lambda e: 0, None)[2]
    assert alone < first < 300  # cut, but less than the window alone would have cut it
    seconds = 30 * 0.782 + 30 * 0.40
    plan.replan_midway(run, 0, 60, seconds, 20 + seconds)
    pace = budget.blended_pace(0.423, 30, 60, seconds)
    remaining = 200 * (1 - MARGIN) - (20 + seconds) + 60 * pace
    more, _, steps = choose_steps(remaining, 150, (pace, pace), 5.5, lambda e: 0, None)
    assert plan.steps == steps > first and len(plan.replanned) == 2  # longer again


def test_a_fifth_into_the_last_epoch_it_is_planned_again_but_not_in_the_epochs_between():
    """Planned 3 epochs of 10 steps, the last cut to 6 (26 in all), timed 1 s a step, 2 s evaluation, in
    100 s. The session's first epoch was planned again already; epoch 2 (not the last) is left alone;
    5 steps into epoch 3 at 0.5 s a step the last epoch is given more steps, as choose_steps says at
    that pace weighed with the timed one."""
    plan = _plan(budget_s=100, epochs=3, total_steps=26)
    run = _run(plan, 0, plan.shorten([Stage(0, 3, "all")]), _stepped(0))
    plan._midway_first = 0
    plan.replan_midway(run, 1, 5, 2.5, 50)
    assert (plan.steps, plan.replanned) == (26, [])
    plan.replan_midway(run, 2, 5, 2.5, 70)
    pace = budget.blended_pace(1.0, 5, 5, 2.5)  # 0.75 s
    remaining = 100 * (1 - MARGIN) - 70 + 5 * pace
    more, _, steps = choose_steps(remaining, 10, (pace, pace), 2.0, lambda e: 0, None)
    assert (plan.epochs, plan.steps) == (2 + more, 20 + steps) and plan.steps > 26  # by hand
    assert plan.replanned[-1]["after_epoch"] == 2 and plan.replanned[-1]["into_epoch"] == 5


def test_the_policy_plans_again_at_a_fifth_two_and_three_fifths_of_an_epoch_only():
    calls = []
    plan = _plan(steps_per_epoch=50)
    plan.replan_midway = lambda length, epoch, steps, seconds, now: calls.append(steps)
    policy = budget.TimeBudget(plan, budget.Clock(0.0, source=lambda: 1.0))
    length = SimpleNamespace(steps_per_epoch=50)
    for step in range(1, 51):
        policy.step_end(TrainState(epochs=4), length, 0, step, step * 0.1)
    assert calls == [10, 20, 30]

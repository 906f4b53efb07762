"""trainer.time_budget: the plan chosen from timed steps, a cap with trainer.epochs, the same plan on
resume, and timing that leaves the run's result untouched. No assertion on a time: the plan is held
to the measurements it was made from."""

from __future__ import annotations

import pytest
import torch
from runner import final_tensors, train
from support import TINY, metrics

from trainer.config.values import parse_duration
from trainer.loop.budget import MARGIN, BudgetPlan, choose_steps
from trainer.loop.stages import AUTO_HEAD_FROM, head_epochs_for, plan_stages

QUICK = [*TINY, "data.dataset.train_size=64", "data.dataset.val_size=32"]


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), (90, 90), ("45", 45), ("2m30s", 150), (None, None)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10x", "m", "1m1m", "-5s", "0s", True, "10 minutes"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_a_bad_budget_is_a_one_paragraph_error(tmp_path):
    out = train([*QUICK, "trainer.time_budget=ten"], tmp_path, check=False)
    assert out.returncode == 2 and "trainer.time_budget='ten' is not valid" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_steps_chosen_are_the_most_that_fit():
    def none(e):
        return 0

    # 10 steps an epoch at 0.5 s, 1 s to evaluate and save: an epoch costs 6 s. 96 s: 16 whole epochs
    assert choose_steps(96, 10, (0.5, 0.5), 1.0, none, None) == (16, 0, 160)
    # 100 s: 16 whole epochs, then a 17th with (100 - 17 - 80) / 0.5 = 6 of its 10 steps
    assert choose_steps(100, 10, (0.5, 0.5), 1.0, none, None) == (17, 0, 166)
    assert choose_steps(100, 10, (0.5, 0.5), 1.0, none, 4) == (4, 0, 40)  # trainer.epochs caps it
    assert choose_steps(5, 10, (0.5, 0.5), 1.0, none, None) == (1, 0, 8)  # less than an epoch: a short one
    assert choose_steps(0.5, 10, (0.5, 0.5), 1.0, none, None) == (1, 0, 10)  # not a step: one epoch all the same
    # a head stage of a tenth from 20 epochs on, a head step 0.25 s: 20 epochs = 20 + 2 x 2.5 + 18 x 5 = 115 s
    auto = lambda e: head_epochs_for("auto", e)  # noqa: E731
    assert AUTO_HEAD_FROM == 20 and choose_steps(115, 10, (0.5, 0.25), 1.0, auto, None) == (20, 2, 200)
    # 110 s: 18 whole epochs (108 s); a 19th (no head stage under 20) gets (110 - 19 - 90) / 0.5 = 2 steps
    assert choose_steps(110, 10, (0.5, 0.25), 1.0, auto, None) == (19, 0, 182)


def test_the_head_stage_rule():
    assert [head_epochs_for("auto", e) for e in (1, 2, AUTO_HEAD_FROM - 1)] == [0, 0, 0]
    assert head_epochs_for("auto", AUTO_HEAD_FROM) == 2 and head_epochs_for("auto", 30) == 3
    assert head_epochs_for(2, 5) == 2 and head_epochs_for(0, 50) == 0
    assert [s.train for s in plan_stages(None, "auto", 3)] == ["all"]
    assert [(s.train, s.epochs) for s in plan_stages(None, "auto", 20)] == [("head", 2), ("all", 18)]


def _plan(run_dir) -> BudgetPlan:
    plan = BudgetPlan.from_state(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["budget"])
    assert plan is not None
    return plan


def test_a_budget_chooses_the_epochs_from_its_timed_steps(tmp_path):
    run = tmp_path / "run"
    out = train([*QUICK, "trainer.time_budget=25s", "finetune.head_epochs=auto", f"hydra.run.dir={run}"], tmp_path)
    plan = _plan(run)
    assert plan.budget_s == 25 and plan.cap is None
    assert (plan.head_step_s is not None) == (plan.head_epochs > 0)  # a head stage is timed only when planned
    # the epochs and steps are what the measurements allow (recomputed from what the checkpoint says was measured)
    steps = (plan.all_step_s, plan.head_step_s or plan.all_step_s)
    auto = lambda e: head_epochs_for("auto", e)  # noqa: E731
    expected = choose_steps(25 * (1 - MARGIN) - plan.spent_s, 2, steps, plan.eval_s + plan.save_s, auto, None)
    first = plan.replanned[0] if plan.replanned else {"epochs": [plan.epochs], "steps": [plan.steps]}
    planned_epochs = first["epochs"][0]  # the first plan, before any change from the pace of the epochs run
    assert (planned_epochs, plan.head_epochs, first["steps"][0]) == expected
    assert plan.steps_per_epoch == 2 and plan.all_step_s > 0 and plan.eval_s > 0
    assert f"time budget: {planned_epochs} epoch(s)" in out.stderr + out.stdout
    for change in plan.replanned:  # each change logged, and the next one starts from where the last ended
        assert f"planned again after epoch {change['after_epoch']} " in (run / "train.log").read_text()
    for a, b in zip(plan.replanned, plan.replanned[1:]):
        assert b["epochs"][0] == a["epochs"][1] and b["steps"][0] == a["steps"][1]
    if plan.replanned:
        assert (plan.epochs, plan.steps) == (plan.replanned[-1]["epochs"][1], plan.replanned[-1]["steps"][1])
    m = metrics(run)
    done = m["epochs_completed"] if "epochs_completed" in m else len(m["history"])
    assert done <= plan.epochs
    if done < plan.epochs:  # the machine slowed: stopped early, said why
        assert "has no room for another epoch" in (run / "train.log").read_text()
    # the run's own length follows the plan: the schedule was built for plan.epochs
    assert f"plan: {planned_epochs} epoch(s)" in (run / "train.log").read_text()


def test_trainer_epochs_caps_the_budget_and_timing_leaves_the_result_untouched(tmp_path):
    budget, plain = tmp_path / "budget", tmp_path / "plain"
    train(
        [*QUICK, "trainer.time_budget=1h", "trainer.epochs=2", "finetune.head_epochs=1", f"hydra.run.dir={budget}"],
        tmp_path,
    )
    plan = _plan(budget)
    assert plan.epochs == 2 and plan.cap == 2 and "caps it" in (budget / "train.log").read_text()
    # a head stage given (head_epochs=1) is timed too, and kept: trainer.epochs=2 -> 1 head + 1 all
    assert plan.head_epochs == 1 and plan.head_step_s is not None
    train([*QUICK, "trainer.epochs=2", "finetune.head_epochs=1", f"hydra.run.dir={plain}"], tmp_path)
    a, b = final_tensors(budget), final_tensors(plain)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_resumed_budget_run_keeps_its_plan(tmp_path):
    run = tmp_path / "run"
    args = [*QUICK, "trainer.time_budget=1h", "trainer.epochs=3", "finetune.head_epochs=0", f"hydra.run.dir={run}"]
    killed = train(args, tmp_path, check=False, env={"TRAINER_FAILPOINT": "epoch:1"})
    assert killed.returncode != 0
    first = _plan(run)
    # resumed with another budget on the command line: the checkpoint's plan is kept, nothing is timed again
    out = train([f"resume={run}", "trainer.time_budget=1h"], tmp_path)
    log = out.stdout + out.stderr
    assert "the resumed run's own plan, 3 epoch(s), 0 head only" in log
    assert "spent on start-up and timing" not in log.split("resuming")[-1].split("resumed run's own plan")[0]
    again = _plan(run)
    assert (again.epochs, again.head_epochs, again.all_step_s, again.spent_s) == (
        first.epochs, first.head_epochs, first.all_step_s, first.spent_s,
    )  # fmt: skip
    assert again.resumed_from_s == first.used_s and again.used_s > first.used_s
    assert metrics(run)["finished"]


def test_the_budget_stops_a_run_that_turns_out_slower_than_timed():
    plan = BudgetPlan(
        budget_s=100, epochs=10, head_epochs=0, spent_s=10, all_step_s=1, head_step_s=None, eval_s=1, save_s=0,
        steps_per_epoch=8,
    )  # fmt: skip
    assert not plan.out_of_time(1, 19)  # 9 s an epoch: on pace
    assert not plan.out_of_time(9, 91)  # a 10th would end at 100 s
    assert not plan.out_of_time(9, 95)  # 105.6 s: within the slack
    assert plan.out_of_time(4, 90)  # 20 s an epoch: a 5th would end at 110 s
    assert plan.used_s == pytest.approx(90) and "has no room for another epoch of ~20 s" in plan.stop_reason
    plan.resumed_from_s = 50  # a resumed session adds to what the earlier ones used
    assert plan.out_of_time(2, 30) and plan.used_s == pytest.approx(80)
    short = BudgetPlan(
        budget_s=100, epochs=10, head_epochs=0, spent_s=10, all_step_s=1, head_step_s=None, eval_s=1, save_s=0,
        steps_per_epoch=8, total_steps=74,
    )  # fmt: skip
    # after 9 epochs of 9 s (91 s used, 100 s budget) the 10th is 2 of 8 steps: ~3 s, so it still runs
    assert not short.out_of_time(9, 91)
    assert short.batches_in(9, 8, 1) == 2 and short.batches_in(8, 8, 1) == 8 and short.batches_in(9, 16, 2) == 4


def test_plan_true_shows_the_budgets_plan_without_training(tmp_path):
    run = tmp_path / "run"
    out = train([*QUICK, "trainer.time_budget=10m", "trainer.epochs=5", "plan=true", f"hydra.run.dir={run}"], tmp_path)
    text = out.stdout + out.stderr
    assert "time budget 10 min:" in text and "time budget: 5 epoch(s) (trainer.epochs=5 caps it)" in text
    assert "plan: 5 epoch(s) in 1 stage(s)" in text and "nothing was trained" in text
    assert not (run / "checkpoints").exists()


def test_an_auto_head_stage_is_kept_when_a_resumed_run_is_made_longer(tmp_path):
    run = tmp_path / "run"
    train([*QUICK, "trainer.epochs=2", f"hydra.run.dir={run}"], tmp_path)  # auto: no head stage in 2 epochs
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["head_epochs"] == 0
    out = train([f"resume={run}", "trainer.epochs=20"], tmp_path)  # auto alone would give 20 epochs two
    text = out.stdout + out.stderr
    assert "extending a finished run from 2 to 20 epochs" in text and "the head only" not in text
    assert metrics(run)["epochs_done"] == 20


def test_a_shortened_last_epoch_trains_its_steps_and_the_schedule_ends_with_it(compose_cfg, tmp_path, monkeypatch):
    """A plan of 2 epochs of 4 steps with the second cut to 1 step: 5 steps in all, the second epoch
    evaluated after its one step, and the warm-up + cosine schedule at its floor on the last step."""
    from trainer.loop import build

    def planned(run, budget_s, cap, head_rule, head_fixed, clock):
        return BudgetPlan(60, 2, 0, 1.0, 0.1, None, 0.1, 0.1, run.steps_per_epoch, None, run.steps_per_epoch + 1)

    monkeypatch.setattr(build, "plan_budget", planned)
    monkeypatch.setattr(
        BudgetPlan, "replan", lambda plan, state, length, elapsed: None
    )  # the plan as made (replan: test_replan.py)
    cfg = compose_cfg(*TINY, "data.dataset.train_size=128", "data.dataset.val_size=32", "trainer.time_budget=60s")
    run = build.build_run(cfg, run_dir=tmp_path)
    assert run.steps_per_epoch == 4 and run.state.epochs == 2 and run.plan.stages[-1].steps == 5
    run.fit()
    assert run.state.global_step == 5 and run.state.epoch == 2 and len(run.state.history) == 2
    head_lr = next(g for g in run.optimizer.param_groups if g["label"] == "head")
    base = float(cfg.optimizer.lr) * 1.0  # the head group's lr multiplier is 1
    assert head_lr["lr"] == pytest.approx(base * float(cfg.scheduler.min_lr_ratio), rel=1e-6)

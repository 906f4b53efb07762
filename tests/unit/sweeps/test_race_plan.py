"""The race's plan (how many configurations, the rungs, the winner's epochs, in the budget), its
configurations from the swept values, and a race's trial as a policy on a TrainState: it reports every
epoch to an Optuna study in SQLite, stops when Optuna's pruner says it lost, and pauses at the round's end."""

from __future__ import annotations

import math

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from trainer.errors import UserError
from trainer.loop.race import STUDY, RaceTrial
from trainer.loop.state import TrainState
from trainer.sweeps.race import configurations, options_from, plan_race, race_cost, survivors


def test_successive_halving_keeps_a_share_of_each_round_down_to_one():
    assert survivors(9, 3) == [9, 3, 1]
    assert survivors(12, 3) == [12, 4, 1]
    assert survivors(8, 2) == [8, 4, 2, 1]
    assert survivors(2, 3) == [2, 1]


def test_a_race_costs_every_configuration_to_the_first_rung_and_the_survivors_from_there():
    # by hand: round 0 each at its own pace to epoch 1; round 1 one trial from epoch 1 to 4 at the mean pace (2)
    assert race_cost([1.0, 2.0, 3.0], 0.5, [3, 1], [1, 4]) == pytest.approx(1.5 + 2.5 + 3.5 + (0.5 + 3 * 2.0))


def test_the_plan_gives_the_winner_the_most_epochs_the_budget_holds():
    paces = [10.0] * 9
    plan = plan_race(paces, 2.0, 600.0, eta=3, min_epochs=1, max_epochs=100)
    assert plan is not None and plan.configs == 9
    assert plan.rungs == [1, 3] and plan.survivors == [9, 3, 1]
    rounds = [*plan.rungs, plan.epochs]
    assert plan.expected_s == pytest.approx(race_cost(paces, 2.0, plan.survivors, rounds)) and plan.expected_s <= 600
    assert race_cost(paces, 2.0, plan.survivors, [*plan.rungs, plan.epochs + 1]) > 600  # one more would not fit
    # 9 x (2 + 10) + 3 x (2 + 20) + (2 + 10 (E - 3)) <= 600  ->  E - 3 <= 42.4  ->  E = 45
    assert plan.epochs == 45
    more = plan_race(paces, 2.0, 1200.0, eta=3, min_epochs=1, max_epochs=100)
    assert more is not None and more.epochs > plan.epochs
    capped = plan_race(paces, 2.0, 1e6, eta=3, min_epochs=1, max_epochs=20)
    assert capped is not None and capped.epochs == 20


def test_a_budget_too_small_for_every_configuration_races_fewer_and_none_when_not_two_fit():
    paces = [10.0] * 12
    plan = plan_race(paces, 0.0, 150.0, eta=3, min_epochs=1, max_epochs=100)
    assert plan is not None and plan.configs < 12 and plan.expected_s <= 150
    assert plan_race(paces, 0.0, 25.0, eta=3, min_epochs=1, max_epochs=100) is None


def _parsed(*overrides):
    return OverridesParser.create().parse_overrides(list(overrides))


def test_configurations_are_the_grid_or_draws_from_intervals():
    grid = configurations(_parsed("optimizer.lr=1e-3,2e-3", "data.image_size=64,96", "seed=1"), None, 0)
    assert len(grid) == 4 and all("seed=1" in c for c in grid)
    assert {c[1] for c in grid} == {"optimizer.lr=0.001", "optimizer.lr=0.002"}
    sample = configurations(_parsed("optimizer.lr=1e-3,2e-3,4e-3", "data.image_size=64,96"), 3, 0)
    assert len(sample) == 3 and sample == configurations(
        _parsed("optimizer.lr=1e-3,2e-3,4e-3", "data.image_size=64,96"), 3, 0
    )
    drawn = configurations(_parsed("optimizer.lr=tag(log, interval(1e-4, 1e-1))"), 40, 0)
    lrs = [float(c[0].split("=")[1]) for c in drawn]
    assert all(1e-4 <= v <= 1e-1 for v in lrs)
    below = sum(v < 1e-3 for v in lrs) / len(lrs)
    assert below >= 0.1  # log-uniform: about a third below 1e-3 (uniform would put 1% there)
    assert len({round(math.log10(v), 1) for v in lrs}) > 10
    with pytest.raises(UserError, match="hydra.sweeper.configs=N"):
        configurations(_parsed("optimizer.lr=interval(1e-4, 1e-1)"), None, 0)


@pytest.mark.parametrize(
    "keys, words",
    [
        ({"budget": "soon"}, "hydra.sweeper.budget='soon'"),
        ({"pruner": "median"}, "hydra.sweeper.pruner='median': give halving or hyperband"),
        ({"reduction_factor": 1}, "hydra.sweeper.reduction_factor=1: give an integer >= 2"),
    ],
)
def test_a_bad_sweeper_key_is_refused_by_name(keys, words):
    given = {"budget": "10m", "reduction_factor": 3, "min_epochs": 1, "max_epochs": 50, "pruner": "halving"}
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        options_from(**{**given, **keys, "configs": None, "seed": 0})


def _state(values):
    state = TrainState(epochs=9)
    for e, v in enumerate(values, 1):
        state.history.append({"epoch": e, "val/acc": v, "seconds": 1.0})
        state.epoch = e
    return state


def test_a_trial_reports_each_epoch_loses_to_a_better_one_and_pauses_at_the_rounds_end(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name=STUDY, storage=optuna.storages.RDBStorage(url), direction="maximize")
    study.set_user_attr("pruner", {"kind": "halving", "min_resource": 1, "reduction_factor": 3, "max_resource": 9})
    first, second, third = (study.ask()._trial_id for _ in range(3))

    leader = RaceTrial(url, first, until=1, deadline=None, monitor="val/acc")
    state = _state([0.9])
    leader.epoch_end(state, None)
    assert leader.stop_reason(state) is None  # the first to reach the rung goes on
    assert "round ends at epoch 1" in leader.pause_reason(state)

    loser = RaceTrial(url, second, until=1, deadline=None, monitor="val/acc")
    state = _state([0.5])
    loser.epoch_end(state, None)
    assert "pruned by the race after epoch 1: val/acc 0.5000" in loser.stop_reason(state)

    late = RaceTrial(url, third, until=3, deadline=0.0, monitor="val/acc")  # the race's time is already up
    state = _state([0.95])
    late.epoch_end(state, None)
    assert "budget is spent" in late.stop_reason(state)

    fresh = optuna.load_study(study_name=STUDY, storage=optuna.storages.RDBStorage(url))
    reports = {t._trial_id: t.intermediate_values for t in fresh.get_trials()}
    assert reports == {first: {1: 0.9}, second: {1: 0.5}, third: {1: 0.95}}
    assert fresh.get_trials()[1].user_attrs["pruned_at"] == 1

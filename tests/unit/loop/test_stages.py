"""The stage plan: stages cover the run exactly, and a run resized by a policy keeps its stages'
starts while the last one ends where it is told."""

from __future__ import annotations

import pytest

from trainer.errors import UserError
from trainer.loop.stages import Stage, head_epochs_for, plan_stages, resized


def test_stages_cover_the_run():
    assert plan_stages(None, 0, 5) == [Stage(0, 5, "all")]
    assert plan_stages(None, 2, 5) == [Stage(0, 2, "head"), Stage(2, 3, "all")]
    assert plan_stages(None, "auto", 5) == [Stage(0, 5, "all")] and head_epochs_for("auto", 40) == 4
    given = plan_stages([{"epochs": 1, "train": "head", "lr": 0.01}, {"train": "all"}], 0, 4)
    assert given == [Stage(0, 1, "head", lr=0.01), Stage(1, 3, "all")]
    with pytest.raises(UserError, match="cover 3 epochs but trainer.epochs=4"):
        plan_stages([{"epochs": 1}, {"epochs": 2}], 0, 4)
    with pytest.raises(UserError, match="unknown key"):
        plan_stages([{"epoch": 2}], 0, 2)


def test_a_resized_run_keeps_its_starts_and_cuts_its_last_epoch_when_told():
    stages = [Stage(0, 1, "head"), Stage(1, 3, "all")]
    longer = resized(stages, 6, 60, 10)
    assert longer == [Stage(0, 1, "head"), Stage(1, 5, "all")]  # whole epochs: no steps to cut to
    cut = resized(stages, 6, 53, 10)
    assert cut[-1] == Stage(1, 5, "all", steps=43)  # 53 in all: 10 in the head stage, 43 in the last
    assert resized(cut, 4, 40, 10)[-1].steps is None  # back to whole epochs

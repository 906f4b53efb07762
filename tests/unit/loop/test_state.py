"""The run's typed state: what a checkpoint stores of it comes back whole, the best follows the
monitor's direction, and metrics.json's summary says what the state holds."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from trainer.loop.budget import BudgetPlan
from trainer.loop.state import TrainState


def _state() -> TrainState:
    plan = BudgetPlan(100, 3, 0, 5.0, 0.5, None, 1.0, 0.2, 10)
    return TrainState(
        epochs=3, epoch=2, batch_in_epoch=4, global_step=24, stage_idx=1, best=0.75, best_epoch=2,
        history=[{"epoch": 1, "val/acc": 0.5}, {"epoch": 2, "val/acc": 0.75}], per_class_best={"acc": {"a": 1.0}},
        partial_loss=(3.5, 4), elapsed=12.5, finished=False, budget=plan,
    )  # fmt: skip


def test_the_counters_survive_a_checkpoint():
    state = _state()
    buf = io.BytesIO()
    torch.save(state.to_dict(), buf)  # as a checkpoint holds them: plain values only
    stored = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert stored["planned_epochs"] == 3 and stored["stage"] == 1 and stored["budget"]["epochs"] == 3
    again = TrainState(epochs=3)
    again.load_counters(stored)
    for name in ("epoch", "batch_in_epoch", "global_step", "best", "best_epoch", "history", "per_class_best"):
        assert getattr(again, name) == getattr(state, name), name
    assert again.partial_loss == (3.5, 4) and again.elapsed == 12.5
    assert BudgetPlan.from_state(stored["budget"]) == state.budget


def test_the_best_follows_the_monitors_direction():
    fresh = TrainState(epochs=1)
    assert fresh.improves(0.1, "max") and fresh.improves(0.1, "min")  # nothing yet: anything is best
    state = _state()
    assert state.improves(0.8, "max") and not state.improves(0.75, "max") and not state.improves(0.7, "max")
    assert state.improves(0.7, "min") and not state.improves(0.75, "min")


def test_the_summary_says_what_the_state_holds():
    from types import SimpleNamespace

    state = _state()
    settings = SimpleNamespace(monitor="val/acc", mode="max")
    about = {"weights": {"source": "none"}, "classes": ["a", "b"], "task": "multiclass"}
    summary = state.summary(settings, Path("/runs/x"), about, wall=20.0)
    assert summary["best"] == 0.75 and summary["best_epoch"] == 2 and summary["epochs_done"] == 2
    assert summary["last"] == {"epoch": 2, "val/acc": 0.75} and summary["global_step"] == 24
    assert summary["best_checkpoint"] == "/runs/x/checkpoints/best.pt" and summary["train_time_s"] == 12.5
    assert TrainState(epochs=1).summary(settings, Path("/r"), about, 0.0)["best_checkpoint"] is None

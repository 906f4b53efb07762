"""One trial of a race (``hydra/sweeper=race``, trainer/sweeps/race.py) as a policy on the loop's hooks.

Every epoch the monitored value goes to the trial's Optuna study (an RDB storage, a SQLite file in the
sweep folder, so jobs in other processes or on other machines report to the one study) and the study's
pruner (Optuna's ``SuccessiveHalvingPruner`` or ``HyperbandPruner``) is asked whether the trial lost:
then the run ends there, finished (``stop_reason``). At the round's last epoch (``race.until``) a trial
that goes on stops unfinished (``pause_reason``): last.pt holds it, and the race's next round resumes
it. ``race.deadline`` (a wall-clock time) ends a trial whose next epoch would end past the race's budget."""

from __future__ import annotations

import time
from typing import Any

from trainer.distributed import launch
from trainer.loop.policies import Policy
from trainer.loop.state import TrainState

STUDY = "race"  # the one study of a race's storage


def make_pruner(spec: dict[str, Any]) -> Any:
    """The Optuna pruner a race's study stores as its ``pruner`` attribute (the sweeper and every job
    build the same one from it)."""
    import optuna

    eta, low = int(spec["reduction_factor"]), int(spec["min_resource"])
    if spec["kind"] == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=low, max_resource=int(spec["max_resource"]), reduction_factor=eta
        )
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=eta, min_early_stopping_rate=0)


def load_study(storage: str) -> Any:
    """The race's study with its own pruner, quiet (Optuna logs every report otherwise)."""
    import logging
    import os

    # Optuna 2.10's storage uses SQLAlchemy 1.4 (pinned): its notice about 2.0 is not the user's business
    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the storage's schema check, said at every open
    # the storage itself, not Optuna's cache in front of it: trials this process asked for are reported to
    # by other processes (the jobs), and a cache would keep this process's own stale copy of them
    study = optuna.load_study(study_name=STUDY, storage=optuna.storages.RDBStorage(storage))
    study.pruner = make_pruner(study.user_attrs["pruner"])
    return study


class RaceTrial(Policy):
    """A race's job: reports each epoch's ``monitor`` value to its trial and stops when the pruner says it
    lost, when the round ends (``until``: paused) or when another epoch would pass ``deadline``."""

    def __init__(self, storage: str, trial_id: int, until: int | None, deadline: float | None, monitor: str) -> None:
        import optuna

        self.study = load_study(storage)
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self.until, self.deadline, self.monitor = until, deadline, monitor
        self.verdict: str | None = None

    def epoch_end(self, state: TrainState, length: Any) -> None:
        value = float(state.history[-1][self.monitor])
        verdict = None
        if launch.is_main():
            verdict = self._judge(state, value)
        if launch.is_distributed():  # every rank stops together: rank 0 asked the study
            from trainer.distributed.collectives import broadcast

            verdict = broadcast(verdict)
        self.verdict = verdict

    def _judge(self, state: TrainState, value: float) -> str | None:
        self.trial.report(value, state.epoch)
        if state.epoch >= state.epochs:
            return None  # the end of its plan: nothing left to prune
        if self.trial.should_prune():
            why = (
                f"pruned by the race after epoch {state.epoch}: {self.monitor} {value:.4f} is not among the "
                f"best of the trials that reached this epoch ({type(self.study.pruner).__name__})"
            )
            self.trial.set_user_attr("stopped", why)
            self.trial.set_user_attr("pruned_at", state.epoch)
            return why
        epoch_s = float(state.history[-1].get("seconds") or 0.0)
        if self.deadline is not None and time.time() + epoch_s > self.deadline:
            why = f"the race's budget is spent: another epoch ({epoch_s:.0f} s) would end past it"
            self.trial.set_user_attr("stopped", why)
            return why
        return None

    def stop_reason(self, state: TrainState) -> str | None:
        return self.verdict

    def calibrates(self, state: TrainState) -> bool:
        return not (self.verdict or "").startswith("pruned")  # a loser's temperature is no one's result

    def pause_reason(self, state: TrainState) -> str | None:
        if self.until is None or state.epoch < self.until or state.epoch >= state.epochs:
            return None
        return f"the race's round ends at epoch {self.until}; the next round resumes it from last.pt"

"""What varies a run, hung on the loop's hooks and typed against its state (:class:`TrainState`), never
the whole run: the time budget (``loop/budget.py: TimeBudget``) and early stopping here; a race's
pruning or calibration at the end of a fit go the same way.

The loop calls, in order: ``fit_start`` when training starts or resumes; ``step_end`` after each
optimizer step (with the steps and seconds of this epoch so far, in this session); ``epoch_end`` after
an epoch is evaluated and recorded; ``stop_reason`` right after, where a policy that wants the run to
end now says why; then ``pause_reason``, where a policy that wants the run to stop here unfinished (to be
resumed later, as a race pauses its trials between rounds) says why. A policy changes the run's length
only through :meth:`Length.resize`."""

from __future__ import annotations

from typing import Protocol

from trainer.loop.state import TrainState


class Length(Protocol):
    """The run's length as a policy may see and change it."""

    steps_per_epoch: int

    def in_last_stage(self) -> bool:
        """Is the stage being trained the plan's last (the one whose schedule can stretch)?"""
        ...

    def resize(self, epochs: int, total_steps: int) -> bool:
        """End the run after ``epochs`` epochs and ``total_steps`` optimizer steps in all; False (and
        nothing changed) when the schedule cannot be stretched to it."""
        ...


class Policy:
    """A policy's hooks; each is a no-op unless the policy needs it."""

    def fit_start(self, state: TrainState) -> None:
        pass

    def step_end(self, state: TrainState, length: Length, epoch: int, steps: int, seconds: float) -> None:
        pass

    def epoch_end(self, state: TrainState, length: Length) -> None:
        pass

    def stop_reason(self, state: TrainState) -> str | None:
        """Why the run should end after this epoch, or None to go on."""
        return None

    def pause_reason(self, state: TrainState) -> str | None:
        """Why the run should stop after this epoch without finishing (last.pt resumes it), or None."""
        return None

    def calibrates(self, state: TrainState) -> bool:
        """Whether the finished run should fit its temperature (a trial a race pruned need not)."""
        return True


class EarlyStop(Policy):
    """trainer.early_stop_patience: the run ends after ``patience`` epochs without a better ``monitor``."""

    def __init__(self, patience: int, monitor: str) -> None:
        self.patience, self.monitor = patience, monitor

    def stop_reason(self, state: TrainState) -> str | None:
        if state.best_epoch is None or state.epoch - state.best_epoch < self.patience:
            return None
        p = self.patience
        return (
            f"{self.monitor} has not improved for {p} epoch(s) (trainer.early_stop_patience={p}); best "
            f"{state.best:.4f} at epoch {state.best_epoch}. The run counts as finished"
        )

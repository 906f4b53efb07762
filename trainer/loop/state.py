"""What a run saves and restores: ``state_dict`` holds all of it (model, optimizer, schedule, scaler,
counters, best metric, RNG per rank, sampler position), so a resumed run equals an unbroken one."""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import __version__
from trainer.config.untrusted import load_yaml
from trainer.distributed import collectives as dist
from trainer.errors import UserError
from trainer.runs.checkpoint import (
    link_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

log = logging.getLogger("trainer")


@dataclass
class TrainState:
    """A run's progress: what the loop counts, what it found best, its history and the time budget's
    plan. The policies read it; the loop writes it; a checkpoint holds it (:meth:`to_dict`)."""

    epochs: int  # planned length (a time budget may change it, through Run.resize)
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained
    global_step: int = 0  # optimizer steps
    stage_idx: int | None = None  # the stage being trained (set by Run.enter_stage)
    best: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    per_class_last: dict[str, Any] | None = None
    per_class_best: dict[str, Any] | None = None
    partial_loss: tuple[float, int] = (0.0, 0)  # (sum, count) of train loss in the current epoch
    elapsed: float = 0.0  # training seconds over all sessions of this run
    finished: bool = False
    budget: Any = None  # trainer.time_budget: the BudgetPlan chosen (None: no budget)
    calibration: dict[str, Any] | None = None  # the temperature fit at the end and its figures (loop/calibration.py)

    def to_dict(self) -> dict[str, Any]:
        """The counters as a checkpoint stores them (the budget's plan as its own dict)."""
        return {
            "epoch": self.epoch,
            "planned_epochs": self.epochs,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "stage": self.stage_idx,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "per_class_best": self.per_class_best,
            "partial_loss": list(self.partial_loss),
            "elapsed": self.elapsed,
            "finished": self.finished,
            "budget": self.budget.to_state() if self.budget is not None else None,
        }

    def load_counters(self, state: dict[str, Any]) -> None:
        """The counters of a checkpoint's state (its stage, length and budget are the caller's to apply)."""
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.history = list(state["history"])
        self.per_class_best = state.get("per_class_best")
        self.partial_loss = (float(state["partial_loss"][0]), int(state["partial_loss"][1]))
        self.elapsed = float(state["elapsed"])

    def summary(self, settings: Any, run_dir: Path, about: dict[str, Any], wall: float) -> dict[str, Any]:
        """What metrics.json says of a run: its state, best value, the history, where things are.
        ``about``: the run's weights, classes and task."""
        return {
            "finished": self.finished,
            "monitor": settings.monitor,
            "mode": settings.mode,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "epochs_done": self.epoch,
            "epochs": self.epochs,
            "global_step": self.global_step,
            "last": self.history[-1] if self.history else {},
            "history": self.history,
            "train_time_s": round(self.elapsed, 2),
            "wall_time_s": round(wall, 2),
            "run_dir": str(run_dir),
            "best_checkpoint": str(run_dir / "checkpoints" / "best.pt") if self.best is not None else None,
            "weights": about["weights"],
            "classes": about["classes"],
            "task": about["task"],
            "pid": os.getpid(),
            "per_class": {"last": self.per_class_last, "best": self.per_class_best},
            "calibration": self.calibration,
        }

    def improves(self, value: float, mode: str) -> bool:
        """Is ``value`` of the monitored metric better than the best so far (``mode``: max or min)?"""
        return self.best is None or (value > self.best if mode == "max" else value < self.best)


class RunState:
    """The checkpoint half of :class:`trainer.loop.run.Run`: what it saves and restores."""

    def state_dict(self) -> dict[str, Any]:
        spec = {k: list(v) if isinstance(v, tuple) else v for k, v in self.loaders.input_spec.items()}
        versions = {"trainer": __version__, "torch": str(torch.__version__), "python": platform.python_version()}
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),  # the averaged weights (trainer.ema_decay), or None
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            **self.state.to_dict(),  # counters, best, history, the budget's plan
            "data": self.data_fingerprint,  # what it trained on: a resume on other data is refused
            "head_epochs": self.plan.stages[0].epochs if self.plan.stages[0].train == "head" else 0,
            "partial_loss_ranks": dist.gather(list(self.state.partial_loss)) if self.distributed else None,
            "images_logged": self.tracker.images_logged,
            "tracking": self.tracker.ids(),  # the MLflow / W&B run a resume continues
            "sampler": {"epoch": self.state.epoch, "start": self.state.batch_in_epoch * self.loaders.batch_size},
            "rng": rng_state(),
            "rng_ranks": dist.gather(rng_state()) if self.distributed else None,
            "world_size": dist.world_size(),
            "config": self.settings.config_yaml,
            "classes": list(self.classes),
            "task": self.settings.task,
            "input_spec": spec,
            "weights": dict(self.weights_info),
            "versions": versions,
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if list(state.get("classes", self.classes)) != list(self.classes):
            raise UserError(
                f"{source} was trained on classes {state['classes']}, but the data now has "
                f"{self.classes}: resume with the same data, or start a new run."
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(
                f"{source} does not fit the model of this config: {str(e).splitlines()[0]}. Resume with the "
                "config it was saved with."
            ) from None
        # the optimizer and schedule belong to the stage the checkpoint was written in
        saved_stage = state.get("stage")
        self.enter_stage(int(saved_stage) if saved_stage is not None else self.plan.index(int(state["epoch"])))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as e:
            raise UserError(
                f"{source}: its optimizer or scheduler does not match this config ({e}). "
                "Resume with the optimizer and scheduler it was saved with."
            ) from None
        self.scaler.load_state_dict(state["scaler"])
        self._extend_if_finished(state)
        self.state.load_counters(state)
        saved_world = int(state.get("world_size") or 1)
        if saved_world != dist.world_size() and self.state.batch_in_epoch:
            # the same share of the epoch, in this run's batches per process (not an exact continuation)
            self.state.batch_in_epoch = self.state.batch_in_epoch * saved_world // dist.world_size()
            log.warning(
                "checkpoint written by %d process(es), resumed by %d: continuing the epoch at batch %d",
                saved_world,
                dist.world_size(),
                self.state.batch_in_epoch,
            )
        if state.get("partial_loss_ranks") and len(state["partial_loss_ranks"]) == dist.world_size():
            partial = state["partial_loss_ranks"][dist.rank()]  # each rank's own running sum
            self.state.partial_loss = (float(partial[0]), int(partial[1]))
        self.tracker.resumed_at(self.state.global_step, bool(state.get("images_logged", False)), state.get("tracking"))
        self.ema.load_state_dict(state.get("ema") or self.model.state_dict())  # EMA newly on: from these weights
        self.state.finished = bool(state.get("finished", False)) and (
            self.state.epoch >= self.state.epochs or self.stalled
        )
        ranks = state.get("rng_ranks")
        if ranks and len(ranks) == dist.world_size():
            set_rng_state(ranks[dist.rank()])  # each rank continues its own random streams
        else:
            set_rng_state(state["rng"])
            if self.distributed or ranks:
                log.info(
                    "checkpoint written by %d process(es), resumed by %d: random streams restart from rank 0's",
                    len(ranks or [0]),
                    dist.world_size(),
                )

    def _extend_if_finished(self, state: dict[str, Any]) -> None:
        """Extending a finished run: the extra epochs get a fresh schedule of the same kind over their own
        length (warm-up and decay again), with the optimizer state and weights carried on."""
        planned = state.get("planned_epochs")
        if planned is None and state.get("config"):
            stored = load_yaml(state["config"], "the config stored in the checkpoint")
            planned = stored.get("trainer", {}).get("epochs") if isinstance(stored, dict) else None
        if planned is None or int(state["epoch"]) < int(planned) or self.state.epochs <= int(planned):
            return
        remaining = self.state.epochs - int(state["epoch"])
        self.schedule = self.plan.make_schedule(self.optimizer, self.steps_per_epoch, remaining)
        self.step.schedule = self.schedule
        log.info(
            "extending a finished run from %d to %d epochs: a fresh %s schedule over the %d new epochs",
            int(planned),
            self.state.epochs,
            self.schedule.name,
            remaining,
        )

    def resume_from(self, path: str | Path, state: dict[str, Any] | None = None) -> None:
        """Continue from the checkpoint at ``path`` (``state``: its contents, when already loaded)."""
        self.load_state_dict(state if state is not None else load_checkpoint(path), source=f"checkpoint {path}")
        at = f"epoch {self.state.epoch + 1}" + (
            f", batch {self.state.batch_in_epoch}" if self.state.batch_in_epoch else ""
        )
        log.info(
            "resumed from %s: continuing at %s (step %d) up to epoch %d",
            path,
            at,
            self.state.global_step,
            self.state.epochs,
        )

    def save(self, best: bool = False) -> Path:
        """A numbered checkpoint (the newest ``checkpoint.keep_last`` are kept), linked as last.pt (and best.pt).

        Distributed: every rank takes part (their random states are gathered); rank 0 writes.
        """
        folder = self.run_dir / "checkpoints"
        path = folder / f"epoch{self.state.epoch:03d}-step{self.state.global_step:07d}.pt"
        state = self.state_dict()
        if not self.main:
            return path
        path = save_checkpoint(state, path)
        link_checkpoint(path, folder / "last.pt")
        if best:
            link_checkpoint(path, folder / "best.pt")
        prune_checkpoints(folder, self.settings.keep_last)
        return path

    def _nothing_to_do(self) -> dict[str, Any]:
        if self.state.epoch < self.state.epochs:
            log.info("nothing to do: this run stopped early at epoch %d (%s)", self.state.epoch, self._stall_reason())
        else:
            log.info(
                "nothing to do: this run already has %d of trainer.epochs=%d epochs (raise trainer.epochs to "
                "train longer)",
                self.state.epoch,
                self.state.epochs,
            )
        saved = self.run_dir / "metrics.json"
        summary = json.loads(saved.read_text()) if saved.is_file() else self._write_metrics(0.0)
        best = self.run_dir / "checkpoints" / "best.pt"
        if self.calibrates and best.is_file() and "calibration" not in load_checkpoint(best):
            log.info("best.pt has no temperature yet (the run ended before it was fit): fitting it now")
            self.calibrate()
            summary["calibration"] = self.state.calibration
            self.tracker.write_metrics(summary)
        self._print_summary(summary)
        return summary

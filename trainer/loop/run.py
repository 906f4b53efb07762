"""The run: its loop (fit -> train_one_epoch -> evaluate) and all of its state, built by build.py.

``Run`` reads no config: it gets built objects and a :class:`Settings`. What differs per mode
(the forward, the step, where the batches come from) is chosen in ``enter_stage``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.config.tasks import task_named
from trainer.data.images import BadImageLog
from trainer.data.loaders import Loaders
from trainer.data.mixing import NoMixing
from trainer.distributed import collectives as dist
from trainer.errors import UserError, oom_message
from trainer.loop.calibration import calibrate_best
from trainer.loop.distill import NoTeacher
from trainer.loop.ema import build_average
from trainer.loop.estimate import Estimate, log_plan
from trainer.loop.interrupt import InterruptGuard, RunInterrupted
from trainer.loop.parts import Scores, score_split
from trainer.loop.policies import Policy
from trainer.loop.progress import progress
from trainer.loop.stages import StagePlan, batches_in, log_stage, resized
from trainer.loop.state import RunState, TrainState
from trainer.loop.steps import (
    CachedInputs,
    CachedProbeForward,
    ClosureStep,
    CompiledForward,
    Forward,
    ImageInputs,
    LossMeter,
    ProbeForward,
    SkipNonfiniteStep,
    Step,
    autocast_for,
    val_precision,
)
from trainer.metrics import Metrics
from trainer.models import BuiltModel
from trainer.runs.checkpoint import inference_weights, load_checkpoint
from trainer.runs.failpoints import failpoint
from trainer.runs.tracking import Tracker, print_summary

log = logging.getLogger("trainer")


@dataclass(frozen=True)
class Settings:
    """The run-level settings the loop needs (from trainer.*, checkpoint.*, data.*)."""

    epochs: int
    device: torch.device
    precision: str = "fp32"  # fp32 | bf16 | fp16
    eval_precision: str = "fp32"  # of the val pass: fp32 | same (as training)
    task: str = "multiclass"
    accumulate: int = 1
    clip_grad_norm: float | None = None
    log_every: int = 10
    nonfinite: str = "stop"  # stop | skip
    every_n_steps: int = 0
    keep_last: int = 2
    monitor: str = "val/acc"
    mode: str = "max"
    ignore_index: int | None = None
    channels_last: bool = False
    compile_backend: str | None = None
    cache_features: bool = False
    ema_decay: float | None = None  # weight EMA used for evaluation and best.pt (None: off)
    sync_bn: bool = False
    config_yaml: str = ""  # the resolved config, stored in every checkpoint


class Run(RunState):
    """One training run: model, data, loss, the stage plan, logging and checkpoints."""

    def __init__(
        self,
        *,
        built: BuiltModel,
        loaders: Loaders,
        classes: list[str],
        loss_fn: torch.nn.Module,
        plan: StagePlan,
        settings: Settings,
        tracker: Tracker,
        bad_images: BadImageLog,
        run_dir: Path,
        mixing: NoMixing | None = None,
        policies: list[Policy] | None = None,
    ) -> None:
        s = self.settings = settings
        self.model, self.head_names, self.head = built.model, built.head_names, built.head
        self.weights_info = built.weights
        self.loaders, self.classes, self.plan = loaders, classes, plan
        self.mixing = mixing or NoMixing()  # data.mixup / data.cutmix on each training batch
        self.teacher = NoTeacher()  # distill.teacher: set by build_run
        self._loss_fn = loss_fn
        self.tracker, self.bad_images, self.run_dir = tracker, bad_images, Path(run_dir)
        self.device, self.accumulate = s.device, s.accumulate
        self.state = TrainState(epochs=s.epochs)  # counters, best, history, the budget's plan
        self.policies = list(policies or [])  # on the loop's hooks: early stopping, the time budget (policies.py)
        self.stop_reason = ""  # why a policy ended the run early
        self.pause_reason = ""  # why a policy stopped it unfinished (a race's round ended)
        self.distributed, self.main = dist.is_distributed(), dist.is_main()
        self.guard = InterruptGuard(self.distributed, s.device)
        # Switched-off features are no-op objects, not branches in the loop.
        self.autocast = autocast_for(s.device.type, s.precision)
        self.eval_autocast = autocast_for(s.device.type, val_precision(s.precision, s.eval_precision))
        self.scaler = torch.amp.GradScaler(s.device.type, enabled=s.precision == "fp16")
        self.memory_format = torch.channels_last if s.channels_last else torch.preserve_format
        self.model.to(device=s.device, memory_format=self.memory_format)
        self.ema = build_average(self.model, s.ema_decay)
        self.estimate = Estimate(self)  # the pace of the first steps -> epoch and run time, logged once
        self.loss_fn.to(s.device)
        # fixed now: len(loader) shrinks while the sampler starts part-way into a resumed epoch
        self.batches_per_epoch = len(loaders.train)
        # set per stage by enter_stage
        self.optimizer: torch.optim.Optimizer
        self.schedule: Any
        self.step: Step
        self.forward: Forward
        self.inputs: ImageInputs
        self.head_only = self.probe = False
        self.data_fingerprint: dict[str, Any] | None = None  # what it trains on (data.datasets.fingerprint)

    @property
    def loss_fn(self) -> Any:
        return self._loss_fn

    @loss_fn.setter
    def loss_fn(self, fn: Any) -> None:
        """Swap the loss, also in the current stage's step."""
        self._loss_fn = fn
        if hasattr(self, "step"):
            self.step.loss_fn = self.teacher.wrap(fn)

    @property
    def skipped_steps(self) -> int:
        """Batches skipped for a non-finite loss (trainer.nonfinite=skip) in this session."""
        return getattr(self.step, "skipped", 0)

    @property
    def stalled(self) -> bool:
        """A policy wants the run to end now: trainer.early_stop_patience epochs without an improvement, or
        the time budget has no room for another epoch (its reason kept for the log)."""
        self.stop_reason = next((r for p in self.policies if (r := p.stop_reason(self.state))), "")
        return bool(self.stop_reason)

    @property
    def paused(self) -> bool:
        """A policy wants the run to stop here unfinished (a race's round ends at this epoch)."""
        self.pause_reason = next((r for p in self.policies if (r := p.pause_reason(self.state))), "")
        return bool(self.pause_reason)

    def _pause(self, wall_start: float) -> dict[str, Any]:
        log.info("paused after epoch %d of %d: %s", self.state.epoch, self.state.epochs, self.pause_reason)
        return self._write_metrics(time.perf_counter() - wall_start, status="paused", paused=self.pause_reason)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.accumulate)

    @property
    def total_steps(self) -> int:
        """Optimizer steps the run takes in all: every epoch whole, or the last stage told fewer."""
        last = self.plan.stages[-1]
        if last.steps is None:
            return self.state.epochs * self.steps_per_epoch
        return last.start * self.steps_per_epoch + last.steps

    def batches_in(self, epoch: int) -> int:
        """Batches this epoch trains: all of them, or fewer in a shortened last epoch (a time budget's)."""
        return batches_in(epoch, self.total_steps, self.steps_per_epoch, self.batches_per_epoch, self.accumulate)

    def in_last_stage(self) -> bool:
        return self.state.stage_idx == len(self.plan.stages) - 1

    def resize(self, epochs: int, total_steps: int) -> bool:
        """The one way a policy changes the run's length: it ends after ``epochs`` epochs and ``total_steps``
        optimizer steps, the last stage and its schedule stretched (or shrunk) from where they are. False,
        and nothing changed, when the schedule cannot be (a length fixed once built)."""
        more = total_steps - self.total_steps
        if more == 0 or not self.schedule.stretch(more):
            return False
        self.plan.stages = resized(self.plan.stages, epochs, total_steps, self.steps_per_epoch)
        self.state.epochs = epochs
        return True

    # ------------------------------------------------------------------ stages
    def enter_stage(self, index: int) -> None:
        """Freeze per the stage, a fresh optimizer and schedule, and the forward, step and inputs it trains with."""
        s = self.settings
        setup = self.plan.setup(index, self.model, self.head_names, self.steps_per_epoch)
        self.state.stage_idx, self.optimizer, self.schedule = index, setup.optimizer, setup.schedule
        self.head_only = setup.head_only
        # one process: the probe shortcut (features under no_grad); DDP needs its own forward
        self.probe = self.head_only and not task_named(s.task).per_pixel and not self.distributed
        module = dist.wrap_ddp(self.model, self.device, s.sync_bn) if self.distributed else self.model
        self.inputs = ImageInputs(self.loaders, self.device, self.memory_format)
        if self.probe and s.cache_features:
            self.forward = CachedProbeForward(self.model, self.head, self.autocast)
            self.inputs = CachedInputs(self.loaders, self.device, self.forward, self.eval_autocast)
        elif self.probe:
            self.forward = ProbeForward(self.model, self.head, self.autocast)
        elif s.compile_backend:
            self.forward = CompiledForward(self.model, module, s.compile_backend)
        else:
            self.forward = Forward(self.model, module)
        kind = Step
        if isinstance(self.optimizer, torch.optim.LBFGS):
            kind = ClosureStep
        elif s.nonfinite == "skip":
            kind = SkipNonfiniteStep
        self.step = kind(
            forward=self.forward,
            loss_fn=self.teacher.wrap(self.loss_fn),
            optimizer=self.optimizer,
            schedule=self.schedule,
            scaler=self.scaler,
            autocast=self.autocast,
            accumulate=self.accumulate,
            clip_grad_norm=s.clip_grad_norm,
        )
        log_stage(index, self.plan, setup, self.probe)
        self.estimate.reset()

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train up to ``trainer.epochs``, evaluating and checkpointing every epoch."""
        wall_start = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.state.epoch >= self.state.epochs or self.state.finished:
            return self._nothing_to_do()
        log_plan(self)
        for policy in self.policies:
            policy.fit_start(self.state)
        restore = self.guard.install()
        try:
            epoch = self.state.epoch
            while epoch < self.state.epochs:  # a re-planned time budget may change self.state.epochs as the run goes
                if self.guard.should_stop(True):  # arrived during evaluation: last.pt is this boundary
                    raise self._interrupted()
                if self.plan.index(epoch) != self.state.stage_idx:
                    self.enter_stage(self.plan.index(epoch))
                t0 = time.perf_counter()
                train_loss = self.train_one_epoch(epoch)
                with self.ema.applied(self.model):  # EMA on: the averaged weights are what is scored
                    val, per_class, confusion = self.evaluate()
                self.state.elapsed += time.perf_counter() - t0
                self._end_epoch(epoch, train_loss, val, per_class, confusion, time.perf_counter() - t0, wall_start)
                failpoint("epoch")
                if self.state.finished:  # stopped early
                    break
                if self.paused:  # unfinished, resumable from last.pt: not calibrated, not finished
                    return self._pause(wall_start)
                epoch += 1
            self.state.finished = True  # the last _end_epoch saved this state already
            failpoint("calibrate")
            self.calibrate()
            self.tracker.write_hparams(
                self.state.history[-1] if self.state.history else {}, self.state.best, self.state.epoch
            )
            summary = self._write_metrics(time.perf_counter() - wall_start)
            self.tracker.finish(summary)
        except torch.OutOfMemoryError:
            raise UserError(
                oom_message(self.device, self.loaders.batch_size, self.settings.precision, self.accumulate)
            ) from None
        finally:
            restore()
            self.tracker.close()
        self._print_summary(summary)
        return summary

    def train_one_epoch(self, epoch: int) -> float:
        self.model.train(not self.head_only)  # frozen BatchNorm layers ignore this
        self.head.train()
        n, size = self.batches_in(epoch), self.loaders.batch_size
        meter = LossMeter(self.state.partial_loss, self.device)
        bar = progress(n * size, self.state.batch_in_epoch * size, f"epoch {epoch + 1}/{self.state.epochs}", self.main)
        t0, first = time.perf_counter(), self.state.global_step
        for i, (x, y, *bad) in enumerate(
            self.inputs.train(epoch, self.state.batch_in_epoch), start=self.state.batch_in_epoch
        ):
            if bad and bad[0]:
                self.bad_images.note(bad[0])
            if x.shape[0] == 0:  # every image of the batch unreadable
                bar.update(len(bad[0]))
                continue
            x, y = self.mixing(x, y, epoch, i)
            self.teacher.see(x)
            self.tracker.log_images(x, self.state.global_step)
            loss = self.step.backward(x, y)
            bar.update(x.shape[0])
            if loss is None:  # skipped: non-finite
                continue
            meter.add(loss)
            if (i + 1) % self.accumulate and i + 1 < n:
                continue
            self.step.update()
            self.state.global_step += 1
            self.ema.update(self.model, self.state.global_step)
            self.estimate.tick()
            self.state.batch_in_epoch = i + 1
            if self.state.global_step % self.settings.log_every == 0 or i + 1 == n:
                self._log_train(meter.flush(), epoch, bar)
            if self.policies:  # e.g. the time budget planned again from this epoch's pace
                self._step_end(epoch, first, t0)
                n = self.batches_in(epoch)
            self._save_mid_epoch(i + 1 < n, meter, epoch, bar)
            failpoint("step")
            if i + 1 >= n:  # a time budget's shortened last epoch
                break
        bar.close()
        self.state.batch_in_epoch, self.state.partial_loss = 0, (0.0, 0)
        total = dist.all_sum(meter.totals())
        return float(total[0].item()) / max(1.0, float(total[1].item()))

    def evaluate(self, keep: list[Any] | None = None) -> Scores:
        """Loss and the task's metrics over the val split; per-class values; the confusion matrix.
        ``keep``: a list that receives each batch's ``(logits, targets)`` on the CPU."""
        self.model.eval()
        metrics = Metrics(self.settings.task, len(self.classes), self.device, self.settings.ignore_index)
        batches = self.inputs.val()
        return score_split(
            self.forward.evaluate,
            batches,
            self.loss_fn,
            metrics,
            self.eval_autocast,
            self.bad_images,
            self.device,
            keep,
        )

    @property
    def calibrates(self) -> bool:
        """Whether the run fits a temperature at its end (every task but segmentation; not a trial its
        race pruned)."""
        return not task_named(self.settings.task).per_pixel and all(p.calibrates(self.state) for p in self.policies)

    def calibrate(self) -> None:
        """Temperature scaling of best.pt on the val split (loop/calibration.py): best.pt's weights scored
        again (every rank its shard), the temperature into best.pt, the figures into metrics.json and
        reliability.png. A self-check too: best.pt's monitored value now must be the one the run logged."""
        best = self.run_dir / "checkpoints" / "best.pt"
        if not self.calibrates:
            return
        if self.distributed:  # rank 0 wrote best.pt: every rank looks at it only once it is whole
            dist.broadcast(None)
        if not best.is_file():
            return
        state = load_checkpoint(best)
        model = copy.deepcopy(self.model)
        model.load_state_dict(inference_weights(state))
        metrics = Metrics(self.settings.task, len(self.classes), self.device, self.settings.ignore_index)
        batches, keep = ImageInputs(self.loaders, self.device, self.memory_format).val(), []
        args = (self.loss_fn, metrics, self.eval_autocast, self.bad_images, self.device, keep)
        val = score_split(model.eval(), batches, *args)[0]
        kept = [b for shard in dist.gather(keep) for b in shard] if self.distributed else keep
        del model
        if not self.main:
            return
        logged, now = self.state.best, val.get(self.settings.monitor)
        if logged is not None and now is not None and abs(now - logged) > 1e-6:
            log.warning("best.pt scores %s %.6f on val now; the run logged %.6f", self.settings.monitor, now, logged)
        self.state.calibration = calibrate_best(best, state, kept, task_named(self.settings.task))

    def _step_end(self, epoch: int, first_step: int, t0: float) -> None:
        """The policies' ``step_end``: the epoch's steps and seconds so far in this session (no host sync)."""
        for policy in self.policies:
            policy.step_end(self.state, self, epoch, self.state.global_step - first_step, time.perf_counter() - t0)

    def _log_train(self, mean: float, epoch: int, bar: Any) -> None:
        self._check_finite(mean, epoch)
        lrs = self._lrs()
        self.tracker.log_scalars({"train/loss": mean, **{f"lr/{k}": v for k, v in lrs.items()}}, self.state.global_step)
        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lrs.get('head', 0.0):.2e}", refresh=False)

    def _save_mid_epoch(self, more: bool, meter: LossMeter, epoch: int, bar: Any) -> None:
        """last.pt inside an epoch: when asked to stop, and every checkpoint.every_n_steps steps."""
        every = self.settings.every_n_steps
        stop = more and self.guard.should_stop(self.state.global_step % self.settings.log_every == 0)
        if not (stop or (more and every and self.state.global_step % every == 0)):
            return
        self.state.partial_loss = meter.total()
        self._check_finite(self.state.partial_loss[0], epoch)  # never save a broken state
        self.save()
        if stop:
            bar.close()
            raise self._interrupted()

    def _end_epoch(
        self,
        epoch: int,
        train_loss: float,
        val: dict[str, float],
        per_class: dict[str, list[float]],
        confusion: torch.Tensor | None,
        seconds: float,
        wall_start: float,
    ) -> None:
        monitor = self.settings.monitor
        if monitor not in val:
            raise UserError(f"checkpoint.monitor={monitor!r} is not a metric of this run: use one of {', '.join(val)}.")
        self._check_finite(train_loss, epoch)
        self._check_finite(val["val/loss"], epoch)
        self.schedule.after_epoch(val[monitor])
        row = {"epoch": epoch + 1, "train/loss": train_loss, **val, "lr": self._lrs().get("head", 0.0)}
        self.state.history.append({**row, "seconds": round(seconds, 2)})
        # one x-axis for the run: the epoch's values at the optimizer step where it ended
        self.tracker.log_scalars({**val, "train/epoch_loss": train_loss, "epoch": epoch + 1}, self.state.global_step)
        self.state.epoch = epoch + 1
        improved = self.state.improves(val[monitor], self.settings.mode)
        names = task_named(self.settings.task).scored(self.classes)
        self.state.per_class_last = {m: dict(zip(names, vals)) for m, vals in per_class.items()}
        self.tracker.log_per_class(self.state.per_class_last, self.state.global_step)
        if confusion is not None:
            self.tracker.log_confusion(confusion, self.classes, self.state.global_step, save_png=improved)
        if improved:
            self.state.best, self.state.best_epoch, self.state.per_class_best = (
                val[monitor],
                self.state.epoch,
                self.state.per_class_last,
            )
        for policy in self.policies:
            policy.epoch_end(self.state, self)
        self.state.finished = self.state.epoch >= self.state.epochs or self.stalled
        self.save(best=improved)
        self._write_metrics(time.perf_counter() - wall_start)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in val.items())
        log.info(
            "epoch %d/%d  train/loss %.4f  %s  lr %.2e  %.1fs%s",
            epoch + 1,
            self.state.epochs,
            train_loss,
            shown,
            row["lr"],
            seconds,
            "  *best*" if improved else "",
        )
        if self.state.finished and self.state.epoch < self.state.epochs:
            log.info("early stop after epoch %d of %d: %s", self.state.epoch, self.state.epochs, self._stall_reason())

    def _stall_reason(self) -> str:
        return self.stop_reason or "a policy ended it"

    def _check_finite(self, value: float, epoch: int) -> None:
        if not math.isfinite(value):
            raise UserError(
                f"the training loss became {value} at step {self.state.global_step} (epoch {epoch + 1}); "
                "stopped without saving, so the last checkpoint is the last good state. Lower "
                "optimizer.lr, set trainer.clip_grad_norm=1.0, use trainer.precision=fp32, or "
                "trainer.nonfinite=skip to skip such batches."
            )

    def _interrupted(self) -> RunInterrupted:
        return RunInterrupted(self.guard.signum or 15, self.state.epoch, self.state.global_step, self.run_dir)

    def _lrs(self) -> dict[str, float]:
        lrs: dict[str, float] = {}
        for g in self.optimizer.param_groups:
            lrs.setdefault(g.get("label", g.get("name", "group")), g["lr"])
        return lrs

    # ------------------------------------------------------------------ summary
    def _write_metrics(self, wall: float, **extra: Any) -> dict[str, Any]:
        """metrics.json (rank 0 writes it, with ``extra`` entries); returns the summary on every rank."""
        about = {"weights": self.weights_info, "classes": self.classes, "task": self.settings.task}
        summary = {**self.state.summary(self.settings, self.run_dir, about, wall), **extra}
        self.tracker.write_metrics(summary)
        return summary

    def _print_summary(self, summary: dict[str, Any]) -> None:
        if self.main:
            print_summary(summary)

"""The fine-tuning plan: which parameters train in which epochs, at which learning rates.

``finetune.stages`` lists stages in order, e.g.::

    finetune:
      stages:
        - {epochs: 1, train: head, lr: 3e-3}
        - {epochs: 4, train: all, backbone_lr_mult: 0.1}

``finetune.head_epochs: N`` is the shorthand for ``[{epochs: N, train: head}, {train: all}]``.
The last stage may leave ``epochs`` out: it runs to ``trainer.epochs``. Each stage gets a fresh
optimizer over its trainable parameters and its own schedule over its own length
(:meth:`StagePlan.setup`); ``scripts/plot_lr.py`` draws a config's curve from the same plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from trainer.errors import UserError
from trainer.loop.optim import param_groups
from trainer.models.freeze import apply_freeze, resolve_freeze

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    start: int  # first epoch (0-based)
    epochs: int
    train: str  # "head" | "all" (all but what model.freeze / the stage's freeze names)
    lr: float | None = None  # None: optimizer.lr
    backbone_lr_mult: float | None = None  # None: finetune.backbone_lr_mult
    layer_decay: float | None = None  # None: finetune.layer_decay
    freeze: Any = None  # None: model.freeze
    steps: int | None = None  # optimizer steps in all, when its last epoch is cut short (a time budget)

    @property
    def end(self) -> int:
        return self.start + self.epochs


STAGE_KEYS = {f.name for f in fields(Stage)} - {"start", "steps"}  # what a finetune.stages entry may set


AUTO_HEAD_FROM = 20  # finetune.head_epochs=auto: no head-only stage in runs shorter than this (docs/transfer.md)


def head_epochs_for(head_epochs: Any, total_epochs: int) -> int:
    """``finetune.head_epochs`` for a run of ``total_epochs``: a number as given; ``auto``: none in a run
    shorter than AUTO_HEAD_FROM epochs (measured from 1 to 10 epochs on three sets: a head-only stage did
    not win on every one at any length), else a tenth (longer runs were not measured)."""
    if str(head_epochs) == "auto":
        return 0 if total_epochs < AUTO_HEAD_FROM else total_epochs // 10
    return int(head_epochs or 0)


def started_head_epochs(state: dict[str, Any]) -> int | None:
    """The head-only epochs a checkpoint's run started with (its own record, or its config's number)."""
    head = state.get("head_epochs")
    if head is None:  # a checkpoint from before head_epochs=auto
        from trainer.config.untrusted import load_yaml

        stored = load_yaml(state.get("config") or "{}", "the config stored in the checkpoint")
        head = ((stored.get("finetune") or {}).get("head_epochs", 0)) if isinstance(stored, dict) else 0
    return head if isinstance(head, int) and not isinstance(head, bool) and head >= 0 else None


def plan_stages(stages: Any, head_epochs: Any, total_epochs: int) -> list[Stage]:
    """Stages covering exactly ``total_epochs``, from ``finetune.stages`` or ``finetune.head_epochs``."""
    raw = stages
    if not raw:
        head = min(head_epochs_for(head_epochs, total_epochs), total_epochs)
        raw = ([{"epochs": head, "train": "head"}] if head else []) + (
            [{"train": "all"}] if head < total_epochs else []
        )
    out: list[Stage] = []
    start = 0
    for i, spec in enumerate(raw):
        spec = dict(spec)
        unknown = set(spec) - STAGE_KEYS
        if unknown:
            raise UserError(
                f"finetune.stages[{i}]: unknown key(s) {sorted(unknown)}; a stage takes {', '.join(sorted(STAGE_KEYS))}."
            )
        train = str(spec.get("train", "all"))
        if train not in ("head", "all"):
            raise UserError(f"finetune.stages[{i}].train={train!r}: use head or all.")
        epochs = spec.get("epochs")
        if epochs is None:
            if i != len(raw) - 1:
                raise UserError(f"finetune.stages[{i}] needs epochs (only the last stage may leave it out).")
            epochs = total_epochs - start
        epochs = int(epochs)
        if epochs < 1:
            raise UserError(
                f"finetune.stages[{i}].epochs={epochs}: must be 1 or more "
                f"(the stages before it already cover {start} of trainer.epochs={total_epochs})."
            )
        extra = {k: spec.get(k) for k in ("lr", "backbone_lr_mult", "layer_decay", "freeze")}
        out.append(Stage(start, epochs, train, **extra))
        start += epochs
    if start != total_epochs:
        raise UserError(
            f"finetune.stages cover {start} epochs but trainer.epochs={total_epochs}: make them "
            "agree, or leave out the last stage's epochs so it runs to the end."
        )
    return out


@dataclass
class StageSetup:
    """What one stage trains with: built when the stage starts."""

    optimizer: Any
    schedule: Any
    head_only: bool  # the whole backbone is frozen (a linear probe)
    counts: dict[str, int]


@dataclass
class StagePlan:
    """The stages, the run-wide lr rules they default to, and the builders of optimizer and schedule.

    ``make_optimizer(groups, model)`` and ``make_schedule(optimizer, steps_per_epoch, epochs)`` come
    from the config (build.py); ``setup`` freezes per the stage and calls them.
    """

    stages: list[Stage]
    lr: float
    weight_decay: float
    backbone_lr_mult: float
    layer_decay: float | None
    freeze: Any  # model.freeze: what stays frozen in an all-layers stage
    bn_mode: str
    make_optimizer: Callable[[list[dict[str, Any]], Any], Any]
    make_schedule: Callable[..., Any]  # (optimizer, steps_per_epoch, epochs, total_steps=None)

    def index(self, epoch: int) -> int:
        for i, st in enumerate(self.stages):
            if st.start <= epoch < st.end:
                return i
        return len(self.stages) - 1

    def setup(self, index: int, model: Any, head_names: set[str], steps_per_epoch: int) -> StageSetup:
        """Freeze per the stage, then a fresh optimizer over its trainable parameters and its schedule."""

        st = self.stages[index]
        backbone = {n for n, _ in model.named_parameters() if n not in head_names}
        if st.train == "head":
            frozen = backbone
        else:
            frozen = resolve_freeze(st.freeze if st.freeze is not None else self.freeze, model, head_names)
        counts = apply_freeze(model, head_names, frozen, self.bn_mode)
        mult = st.backbone_lr_mult if st.backbone_lr_mult is not None else self.backbone_lr_mult
        decay = st.layer_decay if st.layer_decay is not None else self.layer_decay
        lr = float(st.lr if st.lr is not None else self.lr)
        groups = param_groups(model, head_names, lr, self.weight_decay, float(mult), decay)
        if not groups:
            raise UserError("nothing to train: every parameter is frozen (check model.freeze and finetune.bn).")
        optimizer = self.make_optimizer(groups, model)
        schedule = self.make_schedule(optimizer, steps_per_epoch, st.epochs, st.steps)
        return StageSetup(optimizer, schedule, backbone <= frozen, counts)


def log_stage(index: int, plan: StagePlan, setup: StageSetup, probe: bool) -> None:
    st, counts = plan.stages[index], setup.counts
    what = "the head only" if setup.head_only else ("all layers" if counts["frozen"] == 0 else "some layers")
    log.info(
        "stage %d/%d, epochs %d-%d, %s: %s trainable / %s frozen params; BatchNorm %d layers in eval mode "
        "(finetune.bn=%s)%s",
        index + 1,
        len(plan.stages),
        st.start + 1,
        st.end,
        what,
        f"{counts['trainable']:,}",
        f"{counts['frozen']:,}",
        counts["bn_frozen"],
        plan.bn_mode,
        "; linear probe: backbone in eval mode under no_grad" if probe else "",
    )
    log.info("  %-26s %10s %10s %8s", "param group", "params", "lr", "wd")
    for g in setup.optimizer.param_groups:
        n = sum(p.numel() for p in g["params"])
        log.info("  %-26s %10s %10.2e %8g", g["name"], f"{n:,}", g["lr"], g["weight_decay"])
    log.info(
        "  %s over %d groups; scheduler %s per %s",
        type(setup.optimizer).__name__,
        len(setup.optimizer.param_groups),
        setup.schedule.name,
        setup.schedule.interval,
    )


def batches_in(epoch: int, total_steps: int, steps_per_epoch: int, batches_per_epoch: int, accumulate: int) -> int:
    """Batches epoch ``epoch`` (0-based) trains when the run takes ``total_steps`` optimizer steps in all:
    every batch, or in a shortened last epoch what its steps take."""
    left = total_steps - epoch * steps_per_epoch
    return batches_per_epoch if left >= steps_per_epoch else max(1, min(batches_per_epoch, left * accumulate))


def resized(stages: list[Stage], epochs: int, total_steps: int, steps_per_epoch: int) -> list[Stage]:
    """The stages with the last one ending after ``epochs`` epochs and ``total_steps`` optimizer steps in
    all (its last epoch cut short when that is fewer than whole epochs)."""
    import dataclasses

    last = stages[-1]
    steps = total_steps - last.start * steps_per_epoch if total_steps < epochs * steps_per_epoch else None
    return [*stages[:-1], dataclasses.replace(last, epochs=epochs - last.start, steps=steps)]

"""The staged fine-tuning plan: which parameters train in which epochs, at which learning rates.

``finetune.stages`` lists stages in order, e.g.::

    finetune:
      stages:
        - {epochs: 1, train: head, lr: 3e-3}
        - {epochs: 4, train: all, backbone_lr_mult: 0.1}

``finetune.head_epochs: N`` is the shorthand for ``[{epochs: N, train: head}, {train: all}]``.
The last stage may leave ``epochs`` out: it runs to ``trainer.epochs``. Each stage gets a fresh
optimizer over its trainable parameters and its own schedule over its own length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.errors import UserError

STAGE_KEYS = {"epochs", "train", "lr", "backbone_lr_mult", "layer_decay", "freeze"}


@dataclass(frozen=True)
class Stage:
    start: int                   # first epoch (0-based)
    epochs: int
    train: str                   # "head" | "all" (all but what model.freeze / the stage's freeze names)
    lr: float | None = None      # None: optimizer.lr
    backbone_lr_mult: float | None = None
    layer_decay: float | None = None
    freeze: Any = None           # None: model.freeze

    @property
    def end(self) -> int:
        return self.start + self.epochs


def plan_stages(finetune: Any, total_epochs: int) -> list[Stage]:
    """Stages covering exactly ``total_epochs``, from ``finetune.stages`` or ``finetune.head_epochs``."""
    raw = finetune.get("stages") if finetune is not None else None
    if not raw:
        head = int((finetune or {}).get("head_epochs") or 0)
        head = min(head, total_epochs)
        raw = ([{"epochs": head, "train": "head"}] if head else []) + \
              ([{"train": "all"}] if head < total_epochs else [])
    stages: list[Stage] = []
    start = 0
    for i, spec in enumerate(raw):
        spec = dict(spec)
        unknown = set(spec) - STAGE_KEYS
        if unknown:
            raise UserError(f"finetune.stages[{i}]: unknown key(s) {sorted(unknown)}; a stage takes "
                            f"{', '.join(sorted(STAGE_KEYS))}.")
        train = str(spec.get("train", "all"))
        if train not in ("head", "all"):
            raise UserError(f"finetune.stages[{i}].train={train!r}: use head or all.")
        last = i == len(raw) - 1
        epochs = spec.get("epochs")
        if epochs is None:
            if not last:
                raise UserError(f"finetune.stages[{i}] needs epochs (only the last stage may leave it out).")
            epochs = total_epochs - start
        epochs = int(epochs)
        if epochs < 1:
            raise UserError(f"finetune.stages[{i}].epochs={epochs}: must be 1 or more "
                            f"(the stages before it already cover {start} of trainer.epochs={total_epochs}).")
        stages.append(Stage(start, epochs, train, spec.get("lr"), spec.get("backbone_lr_mult"),
                            spec.get("layer_decay"), spec.get("freeze")))
        start += epochs
    if start != total_epochs:
        raise UserError(f"finetune.stages cover {start} epochs but trainer.epochs={total_epochs}: make them "
                        "agree, or leave out the last stage's epochs so it runs to the end.")
    return stages


def stage_index(stages: list[Stage], epoch: int) -> int:
    for i, st in enumerate(stages):
        if st.start <= epoch < st.end:
            return i
    return len(stages) - 1

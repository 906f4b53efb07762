"""Weight EMA (``trainer.ema_decay``): an exponential moving average of the weights, updated after each
optimizer step, used for evaluation and so for best.pt. timm's ModelEmaV3 keeps the average (with its
decay warm-up: ``1 - (1 + step)^(-2/3)``, capped at the decay, so early averages follow the weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class NoAverage:
    """EMA off: evaluation uses the trained weights as they are."""

    enabled = False

    def update(self, model: torch.nn.Module, step: int) -> None:
        pass

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        yield

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


class WeightAverage(NoAverage):
    """The EMA of a model's weights and buffers, swapped into the model while it is evaluated."""

    enabled = True

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True)
        self.ema.module.requires_grad_(False)

    def update(self, model: torch.nn.Module, step: int) -> None:
        self.ema.update(model, step=step)

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its trained ones again after it."""
        trained = [t.detach().clone() for t in model.state_dict().values()]
        _copy(model, self.ema.module.state_dict().values())
        try:
            yield
        finally:
            _copy(model, trained)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: Any) -> None:
        if state is not None:  # a checkpoint from a run without EMA: the average starts from its weights
            self.ema.module.load_state_dict(state)


@torch.no_grad()
def _copy(model: torch.nn.Module, values: Any) -> None:
    for dst, src in zip(model.state_dict().values(), values, strict=True):
        dst.copy_(src)


def build_average(model: torch.nn.Module, decay: float | None) -> NoAverage:
    return WeightAverage(model, decay) if decay else NoAverage()

"""One way to try a few steps and put everything back: the batch-size probe, the lr range test and the
time budget's timing each run real forward/backward passes (and optimizer steps) on the run's model,
then the run starts as if they had never happened."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from trainer.runs.checkpoint import rng_state, set_rng_state


@contextmanager
def trial(model: torch.nn.Module, *stateful: Any, weights: bool = True) -> Iterator[None]:
    """Inside: anything may change. Afterwards the model's weights and buffers (``weights=False``: its
    buffers only, for passes that take no optimizer step), the ``state_dict`` of each of ``stateful``
    (an optimizer, a schedule, a grad scaler), every random stream and the model's train/eval mode are
    as they were before."""
    saved = copy.deepcopy(model.state_dict()) if weights else None
    buffers = None if weights else {k: v.detach().clone() for k, v in model.named_buffers()}
    states = [copy.deepcopy(s.state_dict()) for s in stateful]
    streams, mode = rng_state(), model.training
    try:
        yield
    finally:
        if saved is not None:
            model.load_state_dict(saved)
        else:
            with torch.no_grad():
                for name, value in model.named_buffers():
                    value.copy_(buffers[name])  # type: ignore[index]
        for s, state in zip(stateful, states, strict=True):
            s.load_state_dict(state)
        set_rng_state(streams)
        model.train(mode)

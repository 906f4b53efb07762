"""A training step as the loop takes it: accumulated micro-batches equal one large batch, clipping
bounds the gradient norm, a skipped non-finite batch leaves the weights alone, and the train loss is
summed on the device and read in one go."""

from __future__ import annotations

import contextlib

import pytest
import torch

from trainer.loop.steps import Forward, LossMeter, SkipNonfiniteStep, Step


class _Schedule:
    steps = 0

    def after_step(self) -> None:
        self.steps += 1


def _step(kind=Step, accumulate=1, clip=None, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = _Schedule()
    step = kind(
        forward=Forward(model, model), loss_fn=torch.nn.functional.cross_entropy, optimizer=opt, schedule=schedule,
        scaler=torch.amp.GradScaler("cpu", enabled=False), autocast=contextlib.nullcontext, accumulate=accumulate,
        clip_grad_norm=clip,
    )  # fmt: skip
    return model, step, schedule


def test_accumulated_micro_batches_equal_one_batch():
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    whole, one, _ = _step()
    one.backward(x, y)
    one.update()
    parts, two, schedule = _step(accumulate=2)
    two.backward(x[:4], y[:4])
    two.backward(x[4:], y[4:])
    two.update()
    assert torch.allclose(whole.weight, parts.weight, atol=1e-6) and schedule.steps == 1


def test_clipping_bounds_the_gradient_norm():
    model, step, _ = _step(clip=0.01)
    seen = []
    step.optimizer.step = lambda: seen.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
    step.backward(torch.randn(8, 3) * 100, torch.randint(0, 2, (8,)))
    step.update()
    assert float(seen[0]) == pytest.approx(0.01, rel=1e-4)


def test_a_non_finite_batch_is_skipped_and_leaves_the_weights():
    model, step, schedule = _step(SkipNonfiniteStep)
    before = model.weight.detach().clone()
    assert step.backward(torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long)) is None
    assert step.skipped == 1 and torch.equal(model.weight, before) and schedule.steps == 0


def test_the_loss_meter_sums_on_the_device():
    meter = LossMeter((1.0, 2), torch.device("cpu"))
    for v in (0.5, 1.5):
        meter.add(torch.tensor(v))
    assert meter.flush() == pytest.approx(1.0)  # the mean since the last flush
    meter.add(torch.tensor(3.0))
    assert meter.total() == (pytest.approx(6.0), 5)  # the resumed partial sum included

"""The trial helper: whatever a few trial steps change, the model, its optimizer, schedule and scaler,
the random streams and the train/eval mode are as before; with weights=False the buffers are."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainer.loop.trial import trial


def _parts():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, optimizer, schedule, scaler


def _steps(model, optimizer, schedule, n=3):
    model.train()
    for _ in range(n):
        loss = model(torch.randn(16, 4)).square().mean() + random.random() + float(np.random.rand())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()


def _snapshot(model, optimizer, schedule):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        optimizer.state_dict()["param_groups"][0]["lr"],
        len(optimizer.state_dict()["state"]),
        schedule.state_dict()["last_epoch"],
    )


def test_steps_taken_inside_a_trial_leave_no_trace():
    model, optimizer, schedule, scaler = _parts()
    model.eval()
    before = _snapshot(model, optimizer, schedule)
    with trial(model, optimizer, schedule, scaler):
        _steps(model, optimizer, schedule)
        assert not torch.equal(model.state_dict()["0.weight"], before[0]["0.weight"])
    after = _snapshot(model, optimizer, schedule)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:]
    assert not model.training  # the mode it had


def test_the_random_streams_continue_as_if_no_trial_ran():
    model, optimizer, schedule, scaler = _parts()
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    with trial(model, optimizer, schedule, scaler):
        _steps(model, optimizer, schedule)
    tried = (torch.rand(4), random.random(), float(np.random.rand()))
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    plain = (torch.rand(4), random.random(), float(np.random.rand()))
    assert torch.equal(tried[0], plain[0]) and tried[1:] == plain[1:]


def test_buffers_only_and_an_exception_inside():
    model, *_ = _parts()
    weights = model[0].weight.detach().clone()
    stats = model[1].running_mean.clone()
    with pytest.raises(RuntimeError), trial(model, weights=False):
        model.train()
        model(torch.randn(32, 4) * 5 + 3)  # moves BatchNorm's running statistics
        with torch.no_grad():
            model[0].weight.add_(1.0)  # not put back: weights=False is for passes that take no step
        raise RuntimeError("a probe that ran out of memory")
    assert torch.equal(model[1].running_mean, stats) and torch.equal(model[0].weight, weights + 1.0)

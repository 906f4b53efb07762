"""Temperature scaling and the calibration figures, held to netcal, scikit-learn and sums by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss

from trainer.config.tasks import task_named
from trainer.loop.calibration import Scaled, calibrate, figures, fit_temperature, stored_temperature

MULTICLASS, BINARY, MULTILABEL = (task_named(n) for n in ("multiclass", "binary", "multilabel"))


def _overconfident(n: int, classes: int, temperature: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / temperature): the true temperature is known."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 4
    labels = torch.multinomial((logits / temperature).softmax(1), 1, generator=g).squeeze(1)
    return logits, labels


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with_and_netcal_finds_the_same():
    from netcal.scaling import TemperatureScaling

    logits, labels = _overconfident(6000, 5, temperature=2.0)
    t = float(fit_temperature(logits, labels, MULTICLASS)[0])
    assert t == pytest.approx(2.0, rel=0.08)
    theirs = TemperatureScaling(detection=False)
    theirs.fit(logits.softmax(1).numpy().astype(np.float64), labels.numpy())
    # netcal keeps the inverse: calibrated logits are log-probabilities times its ``temperature``
    assert t == pytest.approx(1.0 / float(np.ravel(theirs.temperature)[0]), rel=0.01)


def test_ece_nll_and_brier_of_a_softmax_equal_netcal_scikit_learn_and_a_sum_by_hand():
    from netcal.metrics import ECE

    logits, labels = _overconfident(3000, 6, temperature=1.7, seed=1)
    for temperature in (None, torch.tensor([1.7])):
        got = figures(logits, labels, MULTICLASS, temperature)
        probs = (logits.double() / (temperature.double() if temperature is not None else 1.0)).softmax(1).numpy()
        y = labels.numpy()
        assert got["ece"] == pytest.approx(ECE(bins=15).measure(probs, y), abs=1e-5)
        assert got["nll"] == pytest.approx(log_loss(y, probs, labels=range(6)), abs=1e-5)
        assert got["brier"] == pytest.approx(float(((probs - np.eye(6)[y]) ** 2).sum(1).mean()), abs=1e-5)


def test_a_sigmoid_output_is_binned_by_its_own_probability_as_netcal_and_scikit_learn_do():
    from netcal.metrics import ECE

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2000, 1, generator=g) * 3
    targets = (torch.rand(2000, 1, generator=g) < (logits / 2.5).sigmoid()).float()
    got = figures(logits, targets, BINARY, None)
    p, y = logits.sigmoid().double().numpy().ravel(), targets.numpy().ravel().astype(int)
    assert got["ece"] == pytest.approx(ECE(bins=15).measure(p, y), abs=1e-5)
    assert got["nll"] == pytest.approx(log_loss(y, p), abs=1e-5)
    assert got["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-6)
    assert float(fit_temperature(logits, targets, BINARY)[0]) == pytest.approx(2.5, rel=0.12)


def test_multilabel_gets_a_temperature_per_class():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5000, 3, generator=g) * 3
    truth = torch.tensor([0.5, 1.0, 3.0])
    targets = (torch.rand(5000, 3, generator=g) < (logits / truth).sigmoid()).float()
    t = fit_temperature(logits, targets, MULTILABEL)
    assert t.shape == (3,)
    assert t.tolist() == pytest.approx(truth.tolist(), rel=0.12)


def test_the_after_figures_are_measured_on_the_half_the_temperature_did_not_see():
    logits, labels = _overconfident(400, 4, temperature=1.8, seed=4)
    bins, result = calibrate(logits, labels, MULTICLASS)
    even, odd = (torch.tensor(t) for t in result["half_temperatures"])
    assert even.item() != odd.item()
    held_out = logits.clone()
    held_out[0::2] = logits[0::2] / odd  # the even images with the odd half's temperature
    held_out[1::2] = logits[1::2] / even
    assert result["after"] == pytest.approx(figures(held_out, labels, MULTICLASS, None), abs=1e-6)
    assert result["before"] == figures(logits, labels, MULTICLASS, None)
    assert result["temperature"] == pytest.approx(fit_temperature(logits, labels, MULTICLASS).tolist(), abs=1e-6)
    assert result["after"]["nll"] < result["before"]["nll"]  # overconfident logits: the temperature helps
    assert result["after"]["ece"] < result["before"]["ece"]
    assert sum(n for _, _, n in bins["before"]) == sum(n for _, _, n in bins["after"]) == 400


def test_a_stored_temperature_is_read_only_when_it_is_a_list_of_positive_numbers():
    assert stored_temperature({}) is None
    assert stored_temperature({"calibration": {"skipped": "few images"}}) is None
    for bad in ("2", [], [0.0], [-1.0], [float("nan")], ["2"], [True, "x"]):
        assert stored_temperature({"calibration": {"temperature": bad}}) is None, bad
    assert stored_temperature({"calibration": {"temperature": [1.5, 2]}}).tolist() == [1.5, 2.0]


def test_the_exported_graph_divides_the_logits_by_the_temperature():
    model = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    torch.testing.assert_close(Scaled(model, torch.tensor([2.0]))(x), model(x) / 2)
    per_class = torch.tensor([1.0, 2.0, 4.0])
    torch.testing.assert_close(Scaled(model, per_class)(x), model(x) / per_class)

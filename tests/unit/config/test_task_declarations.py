"""The task declarations agree with what the code does for each task."""

from __future__ import annotations

import pytest
import torch

from trainer.config.tasks import TASKS, task_named
from trainer.errors import UserError
from trainer.metrics import Metrics


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("num_classes", [3, 7])
def test_each_task_reports_the_metrics_it_declares(name, num_classes):
    task = task_named(name)
    c = task.outputs(num_classes)
    metrics = Metrics(name, num_classes if not task.one_output else 2, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    shape = (8, c, 4, 4) if task.per_pixel else (8, c)
    logits = torch.randn(shape, generator=g)
    if task.per_pixel:
        target = torch.randint(0, c, (8, 4, 4), generator=g)
    elif task.one_output:
        target = torch.tensor([[0.0], [1.0]] * 4)
    elif task.sigmoid:
        target = torch.randint(0, 2, (8, c), generator=g).float()
    else:
        target = torch.randint(0, c, (8,), generator=g)
    metrics.update(logits, target)
    scalars, _, _ = metrics.compute()
    assert sorted(["val/loss", *scalars]) == sorted(task.metric_names(num_classes))


def test_probabilities_are_a_softmax_or_a_sigmoid_as_the_task_says():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.allclose(task_named("multiclass").probabilities(logits), torch.softmax(logits, 1))
    assert torch.allclose(task_named("multilabel").probabilities(logits), torch.sigmoid(logits))
    one = torch.tensor([[0.3]])
    assert torch.allclose(task_named("binary").probabilities(one), torch.sigmoid(one))
    mask = torch.randn(1, 1, 2, 2)  # a one-channel mask: a sigmoid, not a softmax of ones
    assert torch.allclose(task_named("segmentation").probabilities(mask), torch.sigmoid(mask))


def test_binary_has_one_output_for_its_second_class():
    binary, multi = task_named("binary"), task_named("multiclass")
    assert binary.outputs(2) == 1 and binary.scored(["cat", "dog"]) == ["dog"]
    assert multi.outputs(2) == 2 and multi.scored(["cat", "dog"]) == ["cat", "dog"]
    assert task_named("multiclass").metric_names(5) == ["val/loss", "val/acc", "val/f1_macro"]
    assert "val/top5" in task_named("multiclass").metric_names(6)


def test_an_unknown_task_is_named_with_the_known_ones():
    with pytest.raises(UserError, match="'regression' is not one of multiclass, binary, multilabel, segmentation"):
        task_named("regression")

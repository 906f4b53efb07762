"""trainer.losses.options_for: which loss options serve which task comes from each loss's own ``tasks``,
and every option it names really trains that task (a finite loss with a gradient)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate

from trainer.config.schema import CONF_DIR
from trainer.config.settings import TASKS
from trainer.losses import options_for

SHAPES = {  # logits, targets
    "multiclass": (lambda: torch.randn(6, 4), lambda: torch.tensor([0, 1, 2, 3, 0, 1])),
    "binary": (lambda: torch.randn(6, 1), lambda: torch.tensor([0, 1, 1, 0, 1, 0]).float().view(6, 1)),
    "multilabel": (lambda: torch.randn(6, 4), lambda: (torch.rand(6, 4) > 0.5).float()),
    "segmentation": (lambda: torch.randn(2, 3, 5, 5), lambda: torch.randint(0, 3, (2, 5, 5))),
}


@pytest.mark.parametrize("task", TASKS)
def test_every_option_named_for_a_task_trains_it(task):
    names = options_for(task)
    assert names and all((Path(CONF_DIR) / "loss" / f"{n}.yaml").is_file() for n in names)
    for name in names:
        node = yaml.safe_load((Path(CONF_DIR) / "loss" / f"{name}.yaml").read_text())
        loss_fn = instantiate({**node, "task": task} if "task" in _params(node) else node)
        logits, target = SHAPES[task][0]().requires_grad_(), SHAPES[task][1]()
        loss = loss_fn(logits, target)
        loss.backward()
        assert torch.isfinite(loss) and logits.grad is not None, name


def test_the_options_differ_by_task_as_their_losses_say():
    assert "cross_entropy" in options_for("multiclass") and "cross_entropy" not in options_for("multilabel")
    assert "bce" in options_for("multilabel") and "kl_div" not in options_for("binary")


def _params(node: dict) -> set[str]:
    import inspect

    from trainer.config.targets import locate

    return set(inspect.signature(locate(node["_target_"])).parameters)

"""trainer.config.targets: what a config's ``_target_`` may build."""

from __future__ import annotations

import pytest

from trainer.config.targets import check_targets, why_refused
from trainer.errors import UserError


def test_our_builders_and_torch_classes_may_be_built():
    assert why_refused("trainer.loop.schedules.warmup_cosine") is None
    assert why_refused("torch.optim.AdamW") is None
    assert why_refused("trainer.losses.DiceLoss") is None


def test_a_builder_named_as_an_older_checkpoint_names_it_is_found_where_it_lives_now():
    assert why_refused("trainer.schedules.warmup_cosine") is None
    assert why_refused("trainer.schedules.no_such_schedule") == "no such class or function"


@pytest.mark.parametrize("target", ["os.system", "torch.load", "trainer.runs.checkpoint.save_checkpoint", "x.${y}"])
def test_anything_else_is_refused_with_the_fix(target):
    with pytest.raises(UserError, match="allow_targets"):
        check_targets({"scheduler": {"_target_": target}})

"""build_parts: what scoring needs and nothing of training; its val pass gives the run's own numbers."""

from __future__ import annotations

import pytest
from support import TINY

from trainer.loop.build import build_parts, build_run


def test_the_parts_score_a_model_as_the_run_scores_it(compose_cfg, tmp_path):
    overrides = (*TINY, "trainer.epochs=1", "data.dataset.train_size=32", "data.dataset.val_size=24")
    run = build_run(compose_cfg(*overrides), run_dir=tmp_path / "run")
    run.fit()
    parts = build_parts(compose_cfg(*overrides))
    assert not any(hasattr(parts, name) for name in ("optimizer", "schedule", "tracker", "policies"))
    assert parts.classes == run.classes and parts.loaders.input_spec == run.loaders.input_spec
    parts.built.model.load_state_dict(run.model.state_dict())
    scores, per_class, _ = parts.evaluate()
    again, again_per_class, _ = run.evaluate()
    assert scores == pytest.approx(again) and per_class == again_per_class
    assert scores["val/acc"] == pytest.approx(run.state.history[-1]["val/acc"])

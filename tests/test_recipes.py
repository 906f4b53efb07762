"""Training recipes: weight EMA, early stopping, augmentation policies, mixup/cutmix, the balanced
sampler. Each changes what it should, and resume stays exact with it on."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, final_tensors, interrupt_and_resume


def test_ema_weights_differ_from_the_trained_ones_and_are_what_evaluation_scores(compose_cfg, tmp_path):
    from trainer.build import build_run
    from trainer.checkpoint import inference_weights, load_checkpoint

    run = build_run(compose_cfg(*TINY, "trainer.epochs=2", "trainer.ema_decay=0.9"), run_dir=tmp_path)
    summary = run.fit()
    trained = {k: v.clone() for k, v in run.model.state_dict().items()}
    averaged = run.ema.state_dict()
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained if trained[k].is_floating_point())
    with run.ema.applied(run.model):
        scored = run.evaluate()[0]
    raw = run.evaluate()[0]  # the trained weights are back after the block
    assert all(torch.equal(v, trained[k]) for k, v in run.model.state_dict().items())
    assert summary["last"]["val/loss"] == pytest.approx(scored["val/loss"], rel=1e-5)
    assert raw["val/loss"] != pytest.approx(scored["val/loss"], rel=1e-5)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")  # keeps both; its users take the average
    assert best["ema"].keys() == best["model"].keys()
    assert inference_weights(best) is best["ema"]


def test_ema_decay_warms_up_so_the_first_averages_follow_the_weights(compose_cfg, tmp_path):
    from trainer.build import build_run

    run = build_run(compose_cfg(*TINY, "trainer.ema_decay=0.9998"), run_dir=tmp_path)
    decay = run.ema.ema.get_decay
    assert decay(1) == 0.0 and 0 < decay(10) < 0.9 < decay(10_000) <= 0.9998


def test_a_run_with_ema_resumes_exactly(compose_cfg, tmp_path):
    from trainer.build import build_run

    cfg = compose_cfg(*TINY, "trainer.epochs=2", "finetune.head_epochs=0", "trainer.ema_decay=0.95")
    build_run(cfg, run_dir=tmp_path / "a").fit()
    expected = final_tensors(tmp_path / "a")
    assert any(k.startswith("ema.") for k in expected)
    resumed = interrupt_and_resume(cfg, tmp_path / "b", at_call=5)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)


def test_early_stop_ends_after_patience_epochs_without_improvement_and_counts_as_finished(
    compose_cfg, tmp_path, caplog
):
    from omegaconf import OmegaConf

    from trainer.build import build_run
    from trainer.checkpoint import is_finished

    # lr 0: nothing improves after the first epoch, so patience 2 stops after epoch 3 of 6
    cfg = compose_cfg(*TINY, "trainer.epochs=6", "optimizer.lr=1e-12", "trainer.early_stop_patience=2")
    with caplog.at_level("INFO", logger="trainer"):
        summary = build_run(cfg, run_dir=tmp_path).fit()
    assert summary["epochs_done"] == 3 and summary["best_epoch"] == 1 and summary["finished"]
    assert "early stop after epoch 3 of 6" in caplog.text
    assert is_finished(tmp_path)  # resume=auto and sweep re-runs pass it by
    caplog.clear()
    again = build_run(OmegaConf.merge(cfg, {"resume": str(tmp_path / "checkpoints" / "last.pt")}), run_dir=tmp_path)
    with caplog.at_level("INFO", logger="trainer"):
        assert again.fit()["epochs_done"] == 3
    assert "stopped early at epoch 3" in caplog.text

"""trainer.sweeps.cv: the mean and spread over folds equal numpy's over each fold's best epoch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.sweeps.cv import cross_validation, cv_line


def _job(tmp_path, name, fold, lr, accs, losses):
    folder = tmp_path / name
    folder.mkdir()
    history = [{"epoch": e + 1, "val/acc": a, "val/loss": b} for e, (a, b) in enumerate(zip(accs, losses))]
    best = int(np.argmax(accs)) + 1
    (folder / "metrics.json").write_text(json.dumps({"history": history, "best_epoch": best, "monitor": "val/acc"}))
    return {
        "swept": f"optimizer.lr={lr} data.fold={fold}",
        "status": "finished",
        "run_dir": str(folder),
        "monitor": "val/acc",
    }


def test_each_setting_gets_the_mean_and_std_of_its_folds_at_their_best_epochs(tmp_path):
    rows = [
        _job(tmp_path, "a0", 0, 0.1, [0.5, 0.8], [0.9, 0.4]),
        _job(tmp_path, "a1", 1, 0.1, [0.7, 0.6], [0.5, 0.6]),
        _job(tmp_path, "a2", 2, 0.1, [0.9, 0.95], [0.3, 0.2]),
        _job(tmp_path, "b0", 0, 0.01, [0.4, 0.5], [1.0, 0.9]),
        _job(tmp_path, "b1", 1, 0.01, [0.6, 0.55], [0.8, 0.85]),
        {"swept": "optimizer.lr=0.01 data.fold=2", "status": "failed", "run_dir": str(tmp_path / "none")},
    ]
    entries = {e["setting"]: e for e in cross_validation(rows)}
    a, b = entries["optimizer.lr=0.1"], entries["optimizer.lr=0.01"]
    assert a["folds"] == 3 and b["folds"] == 2  # the failed fold is left out
    assert a["mean"]["val/acc"] == pytest.approx(np.mean([0.8, 0.7, 0.95]))
    assert a["std"]["val/acc"] == pytest.approx(np.std([0.8, 0.7, 0.95]))
    assert a["mean"]["val/loss"] == pytest.approx(np.mean([0.4, 0.5, 0.2]))  # at each fold's best epoch
    assert b["std"]["val/acc"] == pytest.approx(np.std([0.5, 0.6]))
    assert [p["fold"] for p in a["per_fold"]] == [0, 1, 2]
    assert cv_line(a).startswith("cross-validation over 3 folds (optimizer.lr=0.1): val/acc 0.8167 ± 0.1027")


def test_a_sweep_without_folds_has_no_cross_validation(tmp_path):
    assert cross_validation([_job(tmp_path, "x", 0, 0.1, [0.5], [0.5]) | {"swept": "optimizer.lr=0.1"}]) == []

"""trainer.runs.plots: curves.png, the run at a glance, written by the tracker with metrics.json."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from trainer.runs.plots import curves_png
from trainer.runs.tracking import Tracker

HISTORY = [
    {"epoch": 1, "train/loss": 1.9, "val/loss": 1.2, "val/acc": 0.61, "lr": 4e-3},
    {"epoch": 2, "train/loss": 0.8, "val/loss": 0.6, "val/acc": 0.83, "lr": 2e-3},
    {"epoch": 3, "train/loss": 0.4, "val/loss": 0.5, "val/acc": 0.88, "lr": 4e-5},
]


def _image(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_curves_draw_the_losses_the_metric_its_best_epoch_and_the_lr():
    img = _image(curves_png(HISTORY, "val/acc", best_epoch=3))
    assert img.shape[1] > 2 * img.shape[0]  # three panels side by side
    colour = {"train (C0)": (31, 119, 180), "val (C1)": (255, 127, 14), "best (green)": (44, 160, 44)}
    for name, rgb in colour.items():
        assert (np.abs(img - rgb).sum(axis=2) < 30).sum() > 50, f"no {name} line drawn"


def test_the_tracker_writes_curves_png_with_each_metrics_json(tmp_path):
    tracker = Tracker(tmp_path, {}, (0.5,), (0.5,))
    for n in (1, 3):
        tracker.write_metrics({"monitor": "val/acc", "best_epoch": n, "history": HISTORY[:n]})
        assert (tmp_path / "curves.png").stat().st_size > 0 and _image((tmp_path / "curves.png").read_bytes()).std() > 0
    (tmp_path / "curves.png").write_bytes(b"as drawn")  # the same history again (the run's end): not drawn again
    tracker.write_metrics({"monitor": "val/acc", "best_epoch": 3, "history": HISTORY[:3], "finished": True})
    assert (tmp_path / "curves.png").read_bytes() == b"as drawn"
    assert '"finished": true' in (tmp_path / "metrics.json").read_text()  # the summary itself is written
    tracker.write_metrics({"monitor": "val/acc", "best_epoch": 2, "history": HISTORY[:3]})  # a change: drawn
    assert (tmp_path / "curves.png").read_bytes() != b"as drawn"
    tracker.close()

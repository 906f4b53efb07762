"""evaluate on a segmentation run: lowest_iou.csv lists every val image by its own IoU (held to
scikit-learn's Jaccard score of the model's own prediction), lowest first, and lowest_iou.png shows the
lowest ones as image, true and predicted mask side by side."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from runner import in_process, train
from sklearn.metrics import jaccard_score
from support import SEG_TINY

from trainer.use.mistakes import SegmentationScores, image_iou

SEG_QUICK = [*SEG_TINY, "data.dataset.train_size=48", "data.dataset.val_size=12"]


def sklearn_iou(pred, true, ignore=None):
    keep = true != ignore if ignore is not None else np.ones_like(true, dtype=bool)
    p, t = pred[keep], true[keep]
    present = sorted(set(p.tolist()) | set(t.tolist()))
    return jaccard_score(t, p, labels=present, average="macro", zero_division=1.0)


def test_an_images_iou_is_the_mean_over_its_classes_as_scikit_learn_computes_it():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        true = torch.randint(0, 4, (16, 16), generator=g)
        pred = torch.where(torch.rand(16, 16, generator=g) < 0.7, true, torch.randint(0, 4, (16, 16), generator=g))
        true[:3] = 255
        assert image_iou(pred, true, 255) == pytest.approx(sklearn_iou(pred.numpy(), true.numpy(), 255))
    same = torch.zeros(8, 8, dtype=torch.long)
    assert image_iou(same, same, None) == 1.0


def test_only_the_lowest_masks_are_kept():
    scores = SegmentationScores(None, shown=2)
    true = torch.zeros(4, 8, 8, dtype=torch.long)
    logits = torch.zeros(4, 2, 8, 8)
    logits[:, 1, :, :2] = 1  # image i: 2 wrong columns ...
    logits[1, 1] = 1  # ... image 1 all wrong
    logits[3, 1, :, :5] = 1
    scores.append((logits, true))
    assert scores.lowest()[:2] == [1, 3] and set(scores.masks) == {1, 3}


def test_evaluate_lists_every_val_image_by_its_iou_lowest_first(tmp_path):
    from trainer.models.trained import load_trained

    run = tmp_path / "run"
    train([*SEG_QUICK, "trainer.epochs=1", f"hydra.run.dir={run}"], tmp_path)
    proc = in_process("evaluate", [f"checkpoint={run}"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lowest IoU: " in proc.stdout and "lowest_iou.png" in proc.stdout
    rows = list(csv.DictReader(open(run / "eval" / "lowest_iou.csv")))
    assert len(rows) == 12
    ious = [float(r["iou"]) for r in rows]
    assert ious == sorted(ious) and all(0 <= v <= 1 for v in ious)
    # the lowest image's IoU recomputed from the model's own prediction on it
    trained = load_trained(str(run))
    from trainer.loop.build import build_run

    rebuilt = build_run(trained.config, run_dir=tmp_path / "rebuilt", changes={"resume": None, "trainer.device": "cpu"})
    dataset = rebuilt.loaders.val.dataset
    index = int(rows[0]["path"].removeprefix("val #"))
    image, mask = dataset[index]
    spec = trained.input_spec
    x = (image.float()[None] / 255 - torch.tensor(spec["mean"]).view(1, 3, 1, 1)) / torch.tensor(spec["std"]).view(
        1, 3, 1, 1
    )
    with torch.no_grad(), rebuilt.autocast():  # the precision the run scores in (bf16 on a CPU that has it)
        pred = trained.model(x).argmax(1)[0]
    assert float(rows[0]["iou"]) == pytest.approx(sklearn_iou(pred.numpy(), mask.numpy()), abs=1e-6)
    picture = Image.open(run / "eval" / "lowest_iou.png")
    assert picture.size[0] > 500 and picture.size[1] > 8 * 150  # 8 rows of three panels

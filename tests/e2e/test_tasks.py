"""Tasks (multiclass, binary, multilabel, segmentation): losses by hand and at the edges, refusals,
schedules and optimizers as documented, and real runs that learn."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from runner import train
from support import CONF, SEG_TINY, TINY, metrics

LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))


def _loss(compose_cfg, option, task, ignore_index=None):
    from hydra.utils import instantiate

    cfg = compose_cfg(f"loss={option}")
    ignore = cfg.loss.ignore_index if cfg.loss.get("ignore_index") is not None else ignore_index
    return instantiate(cfg.loss, task=task, ignore_index=ignore)


# ---------------------------------------------------------------- losses by hand


def test_nll_is_cross_entropy_of_log_softmax():
    from trainer.losses import NLLLoss

    logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    log_p0 = 2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(-1.0))
    assert NLLLoss()(logits, target).item() == pytest.approx(-log_p0, rel=1e-6)


def test_tversky_and_focal_tversky_by_hand():
    from trainer.losses import FocalTverskyLoss, TverskyLoss

    # binary task, sigmoid: logits 0 -> p 0.5, 100 -> p 1
    logits = torch.tensor([[0.0], [100.0], [0.0]])
    target = torch.tensor([[1.0], [1.0], [0.0]])
    tp, fp, fn = 0.5 + 1.0, 0.5, 0.5
    ti = (tp + 1) / (tp + 0.3 * fp + 0.7 * fn + 1)
    loss = TverskyLoss(alpha=0.3, beta=0.7, smooth=1.0)
    loss.task = "binary"
    assert loss(logits, target).item() == pytest.approx(1 - ti, abs=1e-6)
    focal = FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=0.75, smooth=1.0)
    focal.task = "binary"
    assert focal(logits, target).item() == pytest.approx((1 - ti) ** 0.75, abs=1e-6)
    # alpha = beta = 0.5 is Dice
    from trainer.losses import DiceLoss

    half = TverskyLoss(alpha=0.5, beta=0.5, smooth=0.0)
    x, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    assert half(x, y).item() == pytest.approx(DiceLoss(smooth=0.0)(x, y).item(), abs=1e-6)


def test_kl_div_with_smoothing_is_smoothed_cross_entropy_minus_entropy():
    from trainer.losses import KLDivLoss

    logits, target = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    eps = 0.1
    soft = F.one_hot(target, 4).float() * (1 - eps) + eps / 4
    entropy = -(soft * soft.log()).sum(1).mean()
    expected = F.cross_entropy(logits, target, label_smoothing=eps) - entropy
    assert KLDivLoss(smoothing=eps)(logits, target).item() == pytest.approx(expected.item(), abs=1e-5)


def test_mse_on_probabilities_is_the_brier_score():
    from trainer.losses import ProbabilityLoss

    logits, target = torch.tensor([[0.0, 0.0]]), torch.tensor([1])
    # softmax [0.5, 0.5] vs [0, 1]: squared errors 0.25 + 0.25, mean over 2 outputs
    assert ProbabilityLoss("mse")(logits, target).item() == pytest.approx(0.25)
    assert ProbabilityLoss("l1")(logits, target).item() == pytest.approx(0.5)


def test_sigmoid_focal_and_pos_weight_by_hand():
    from trainer.losses import BCEWithLogitsLoss, FocalLoss

    logits, target = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    focal = FocalLoss(gamma=2.0, alpha=0.25)
    focal.task = "multilabel"
    ce = [math.log(2.0), math.log(1 + math.exp(2.0))]
    p_t = [0.5, 1 / (1 + math.exp(2.0))]
    expected = (0.25 * (1 - p_t[0]) ** 2 * ce[0] + 0.75 * (1 - p_t[1]) ** 2 * ce[1]) / 2
    assert focal(logits, target).item() == pytest.approx(expected, rel=1e-5)
    bce = BCEWithLogitsLoss(pos_weight=[3.0, 1.0])
    bce.task = "multilabel"
    assert bce(logits, target).item() == pytest.approx((3 * ce[0] + ce[1]) / 2, rel=1e-6)


def test_segmentation_ignore_index_counts_nowhere():
    from trainer.losses import CrossEntropyLoss, DiceLoss

    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    ignored = target.clone()
    ignored[:, :2] = 255
    for loss_cls in (CrossEntropyLoss, DiceLoss):
        loss = loss_cls(ignore_index=255)
        loss.task = "segmentation"
        with_ignore = loss(logits, ignored)
        # same as scoring only the kept pixels
        kept = loss(logits[:, :, 2:], target[:, 2:])
        assert with_ignore.item() == pytest.approx(kept.item(), abs=1e-5), loss_cls.__name__


# ---------------------------------------------------------------- every loss, every task it serves, at the edges


def _edge_cases(task):
    """(logits, target) pairs: all correct and confident, a class absent, empty masks."""
    if task == "segmentation":
        empty = torch.zeros(2, 8, 8, dtype=torch.long)  # background only: objects absent
        some = empty.clone()
        some[:, 2:4, 2:4] = 1
        return [
            (F.one_hot(some, 3).permute(0, 3, 1, 2).float() * 30, some),  # all correct, class 2 absent
            (torch.randn(2, 3, 8, 8), empty),
            (F.one_hot(empty, 3).permute(0, 3, 1, 2).float() * 30, empty),
        ]
    if task == "multilabel":
        t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # label 1 and 2 absent, an empty row
        return [((t * 2 - 1) * 30, t), (torch.randn(2, 3), t), (torch.randn(2, 3), torch.zeros(2, 3))]
    if task == "binary":
        t = torch.tensor([[1.0], [0.0]])
        return [((t * 2 - 1) * 30, t), (torch.randn(2, 1), torch.zeros(2, 1))]
    t = torch.tensor([0, 1, 0, 1])  # class 2 absent
    return [(F.one_hot(t, 3).float() * 30, t), (torch.randn(4, 3), t)]


@pytest.mark.parametrize("option", LOSSES)
def test_every_loss_is_finite_at_the_edges_for_every_task_it_serves(compose_cfg, option):
    from trainer.losses import loss_fits

    served = 0
    for task in ("multiclass", "binary", "multilabel", "segmentation"):
        fn = _loss(compose_cfg, option, task, ignore_index=255 if task == "segmentation" else None)
        if loss_fits(fn, "", task):
            continue
        served += 1
        for logits, target in _edge_cases(task):
            logits = logits.clone().requires_grad_(True)
            loss = fn(logits, target)
            loss.backward()
            assert loss.ndim == 0 and torch.isfinite(loss), (task, loss)
            assert torch.isfinite(logits.grad).all(), task
        # a confident right answer scores lower than a confident wrong one
        right, target = _edge_cases(task)[0]
        assert fn(right, target) < fn(-right, target), task
    assert served >= 2


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["data.task=binary", "data.dataset.num_classes=2", "loss=cross_entropy"],
            "loss trainer.losses.CrossEntropyLoss cannot train a binary task: it serves multiclass, segmentation tasks. "
            "For binary use one of: loss=bce",
        ),
        (["loss._target_=torch.nn.CTCLoss"], "it scores sequence alignments (speech, OCR lines), not images"),
        (
            ["checkpoint.monitor=val/mIoU"],
            "checkpoint.monitor=val/mIoU is not a metric of a multiclass task: use one of "
            "val/loss, val/acc, val/f1_macro",
        ),
        (["checkpoint.monitor=val/top5"], "(val/top5 needs more than 5 classes)"),
        (["data=shapes"], "data.task=segmentation needs an encoder-decoder model"),
        (["+model.decoder=unet"], "model.decoder=unet makes per-pixel masks, but data.task=multiclass"),
        (
            ["optimizer=lbfgs", "trainer.accumulate=2"],
            "optimizer=lbfgs re-evaluates the loss inside its own step, so it "
            "does not combine with trainer.accumulate>1",
        ),
        (["data.task=binary"], "data.task=binary needs exactly two classes, found 4"),
    ],
)
def test_what_cannot_serve_the_task_is_refused_with_what_fits(compose_cfg, tmp_path, args, message):
    from trainer.errors import UserError
    from trainer.loop.build import build_run

    cfg = compose_cfg(*TINY, *args)
    with pytest.raises(UserError) as err:
        build_run(cfg, run_dir=tmp_path)
    assert message in str(err.value)


# ---------------------------------------------------------------- schedules and optimizers as documented


def _lrs(compose_cfg, option, *overrides, steps_per_epoch=4, epochs=6, metric=lambda epoch: 1.0):
    from trainer.loop.build import schedule_builder

    cfg = compose_cfg(*TINY, f"scheduler={option}", *overrides)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = schedule_builder(cfg)(opt, steps_per_epoch, epochs)
    lrs = []  # the lr each optimizer step used
    for step in range(steps_per_epoch * epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.after_step()
        if (step + 1) % steps_per_epoch == 0:
            sched.after_epoch(metric((step + 1) // steps_per_epoch))
    return lrs


def test_every_schedule_moves_the_lr_as_documented(compose_cfg):
    per_epoch = lambda lrs: lrs[::4]  # noqa: E731  (lr at the first step of each epoch)
    assert per_epoch(_lrs(compose_cfg, "step", "scheduler.step_size=2", "scheduler.gamma=0.1")) == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    assert per_epoch(
        _lrs(compose_cfg, "multistep", "scheduler.milestones=[1,4]", "scheduler.gamma=0.5")
    ) == pytest.approx([1, 0.5, 0.5, 0.5, 0.25, 0.25])
    assert per_epoch(_lrs(compose_cfg, "exponential", "scheduler.gamma=0.5")) == pytest.approx(
        [0.5**e for e in range(6)]
    )
    assert per_epoch(_lrs(compose_cfg, "multiplicative", "scheduler.factor=0.9")) == pytest.approx(
        [0.9**e for e in range(6)]
    )
    # the classic hand-written rule as a named lambda: x0.1 every 2 epochs, per step
    assert per_epoch(_lrs(compose_cfg, "lambda", "scheduler.rule=step_decay", "scheduler.every=2")) == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    linear = _lrs(compose_cfg, "lambda", "scheduler.rule=linear")
    assert linear[0] == 1 and linear[12] == pytest.approx(0.5) and linear[-1] == pytest.approx(1 / 24)
    poly = _lrs(compose_cfg, "polynomial", "scheduler.power=2")
    assert poly[0] == 1 and poly[12] == pytest.approx(0.25)
    cos = _lrs(compose_cfg, "cosine")
    assert cos[0] == 1 and cos[12] == pytest.approx(0.5) and cos[-1] < 0.01
    # SGDR: back to the top after 1 epoch, then after 2 more
    sgdr = _lrs(compose_cfg, "cosine_warm_restarts", "scheduler.restart_epochs=1", "scheduler.mult=2")
    assert sgdr[0] == 1 and sgdr[3] < 0.2 and sgdr[4] == 1 and sgdr[12] == 1 and sgdr[8] == pytest.approx(0.5)
    cyc = _lrs(compose_cfg, "cyclic", "scheduler.base_ratio=0.1", "scheduler.half_cycle_epochs=1")
    assert cyc[0] == pytest.approx(0.1) and cyc[4] == pytest.approx(1.0) and cyc[8] == pytest.approx(0.1)
    one = _lrs(compose_cfg, "onecycle")
    assert max(one) == pytest.approx(1.0, rel=0.05) and one[0] < 0.1 and one[-1] < 0.01
    # plateau: no improvement for patience+1 epochs -> x factor
    plateau = per_epoch(_lrs(compose_cfg, "plateau", "scheduler.patience=1", "scheduler.factor=0.5"))
    assert plateau == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25])
    assert set(_lrs(compose_cfg, "none")) == {1.0}
    wc = _lrs(compose_cfg, "warmup_cosine", "scheduler.warmup_epochs=1")
    assert wc[0] < wc[3] < 1 and max(wc) == pytest.approx(1.0, rel=0.02) and wc[-1] < 0.05


def test_a_linear_warmup_goes_in_front_of_any_schedule(compose_cfg):
    lrs = _lrs(compose_cfg, "step", "scheduler.step_size=2", "scheduler.gamma=0.1", "schedule.warmup_epochs=1")
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # 4 warm-up steps, rising to the schedule's lr
    assert lrs[4:8] == pytest.approx([1, 1, 1, 1]) and lrs[8] == pytest.approx(0.1)
    cos = _lrs(compose_cfg, "cosine", "schedule.warmup_epochs=2")
    assert cos[:8] == pytest.approx([(i + 1) / 9 for i in range(8)])
    assert cos[8] == 1 and cos[16] == pytest.approx(0.5)  # the cosine runs over the 16 steps after the warm-up


def test_resume_mid_warmup_continues_the_same_lrs(compose_cfg):
    from trainer.loop.build import schedule_builder

    cfg = compose_cfg(*TINY, "scheduler=exponential", "schedule.warmup_epochs=1.5", "scheduler.gamma=0.5")

    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return opt, schedule_builder(cfg)(opt, 4, 4)

    opt, sched = make()
    seen = []
    for step in range(16):
        if step == 5:
            state = {"o": opt.state_dict(), "s": sched.state_dict()}
            opt, sched = make()
            opt.load_state_dict(state["o"])
            sched.load_state_dict(state["s"])
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.after_step()
        if (step + 1) % 4 == 0:
            sched.after_epoch(0.0)
    _, unbroken_sched = make()
    assert seen == pytest.approx(
        _lrs(compose_cfg, "exponential", "schedule.warmup_epochs=1.5", "scheduler.gamma=0.5", epochs=4)
    )


@pytest.mark.slow
def test_lbfgs_trains_with_its_closure(tmp_path):
    run_dir = tmp_path / "run"
    train(
        [
            *TINY,
            "optimizer=lbfgs",
            "optimizer.max_iter=2",
            "optimizer.lr=0.5",
            "trainer.epochs=2",
            "data.dataset.train_size=96",
            "data.dataset.val_size=32",
            "finetune.head_epochs=0",
            "scheduler=none",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    h = metrics(run_dir)["history"]
    assert h[-1]["train/loss"] < h[0]["train/loss"] and h[-1]["val/acc"] > 0.5


# ---------------------------------------------------------------- runs that learn


@pytest.mark.slow
def test_segmentation_on_generated_shapes_reaches_miou_0_8(tmp_path):
    from PIL import Image

    run_dir = tmp_path / "run"
    train([*SEG_TINY, "trainer.epochs=3", "loss=dice_bce", f"hydra.run.dir={run_dir}"], tmp_path)
    m = metrics(run_dir)
    assert m["task"] == "segmentation" and m["monitor"] == "val/mIoU"
    assert m["best"] >= 0.8, m["history"]
    assert set(m["per_class"]["best"]["iou"]) == {"background", "square", "disc"}
    assert {"val/mIoU", "val/dice", "val/acc", "val/loss"} <= set(m["history"][-1])
    assert Image.open(run_dir / "confusion_matrix.png").size[0] > 100
    assert m["calibration"] is None and not (run_dir / "reliability.png").exists()  # not calibrated per pixel


@pytest.mark.slow
def test_fpn_decoder_and_frozen_encoder_train(tmp_path):
    run_dir = tmp_path / "run"
    out = train(
        [
            *SEG_TINY,
            "model.decoder=fpn",
            "model.decoder_channels=[32]",
            "model.freeze=backbone",
            "trainer.epochs=1",
            "data.dataset.train_size=64",
            "data.dataset.val_size=16",
            "loss=focal_tversky",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert "the head only" in out.stdout + out.stderr
    assert metrics(run_dir)["finished"]


def _write_multilabel(root, n, seed):
    """Images with any of 4 coloured patches (the labels), a CSV `path,labels`."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    colours = [(230, 40, 40), (40, 200, 40), (40, 60, 230), (240, 220, 30)]
    names = ["red", "green", "blue", "yellow"]
    rows = ["path,labels"]
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = (torch.rand(32, 32, 3, generator=g) * 60 + 100).to(torch.uint8)
        labels = []
        for k in range(4):
            if torch.rand(1, generator=g).item() < 0.4:
                y, x = (int(v) for v in torch.randint(0, 22, (2,), generator=g))
                img[y : y + 10, x : x + 10] = torch.tensor(colours[k], dtype=torch.uint8)
                labels.append(names[k])
        Image.fromarray(img.numpy()).save(root / "img" / f"{seed}_{i}.png")
        rows.append(f"img/{seed}_{i}.png,{' '.join(labels)}")
    return rows


@pytest.mark.slow
def test_multilabel_from_a_csv_beats_chance_by_a_wide_margin(tmp_path):
    data = tmp_path / "data"
    (data).mkdir()
    (data / "train.csv").write_text("\n".join(_write_multilabel(data, 192, 1)) + "\n")
    (data / "val.csv").write_text("\n".join(_write_multilabel(data, 64, 2)) + "\n")
    run_dir = tmp_path / "run"
    train(
        [
            *TINY,
            "data=multilabel_csv",
            f"data.csv={data / 'train.csv'}",
            f"data.val_csv={data / 'val.csv'}",
            "data.image_size=32",
            "data.num_workers=0",
            "data.augment=none",
            "loss=bce",
            "trainer.epochs=6",
            "data.batch_size=16",
            "finetune.head_epochs=0",
            "optimizer.lr=5e-3",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    m = metrics(run_dir)
    assert (
        m["task"] == "multilabel" and m["monitor"] == "val/mAP" and m["classes"] == ["blue", "green", "red", "yellow"]
    )
    # chance: mAP ~ the share of positives (0.4); macro F1 of a coin ~0.44
    assert m["best"] >= 0.8, m["history"]
    assert m["history"][-1]["val/f1_macro"] >= 0.8
    assert set(m["per_class"]["best"]["ap"]) == {"blue", "green", "red", "yellow"}
    # a temperature per class, kept in best.pt; before it, the NLL is the best epoch's BCE val loss
    from trainer.runs.checkpoint import load_checkpoint

    calibration = m["calibration"]
    assert len(calibration["temperature"]) == 4 and calibration["images"] == 64
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["calibration"] == calibration
    best_loss = m["history"][m["best_epoch"] - 1]["val/loss"]
    assert calibration["before"]["nll"] == pytest.approx(best_loss, abs=1e-5)
    assert (run_dir / "reliability.png").is_file()


@pytest.mark.slow
def test_binary_task_has_one_output_and_its_metrics(tmp_path):
    from trainer.runs.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    train(
        [
            *TINY,
            "data.task=binary",
            "data.dataset.num_classes=2",
            "loss=focal",
            "trainer.epochs=2",
            "checkpoint.monitor=val/auroc",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    m = metrics(run_dir)
    assert m["task"] == "binary" and m["best"] >= 0.9, m["history"]
    assert {"val/acc", "val/f1", "val/auroc"} <= set(m["history"][-1])
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert state["model"]["fc.weight"].shape[0] == 1
    assert len(state["calibration"]["temperature"]) == 1 and m["calibration"] == state["calibration"]
    assert (run_dir / "confusion_matrix.png").is_file()


@pytest.mark.slow
def test_multiclass_metrics_per_class_and_confusion_matrix(tmp_path):
    run_dir = tmp_path / "run"
    train(
        [
            *TINY,
            "data.dataset.num_classes=6",
            "trainer.epochs=1",
            "checkpoint.monitor=val/f1_macro",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    m = metrics(run_dir)
    assert m["monitor"] == "val/f1_macro" and {"val/top5", "val/acc"} <= set(m["history"][-1])
    assert m["history"][-1]["val/top5"] >= m["history"][-1]["val/acc"]
    assert set(m["per_class"]["last"]["recall"]) == {f"class{i}" for i in range(6)}
    assert (run_dir / "confusion_matrix.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    assert "val/confusion_matrix" in ea.Tags()["images"]
    assert "val_per_class/precision/class0" in ea.Tags()["scalars"]


def test_segfolder_reads_images_and_masks_by_stem(tmp_path):
    from PIL import Image

    from trainer.data.datasets import load_segfolder
    from trainer.data.images import BadImage
    from trainer.data.transforms import build_transforms

    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(10):
        Image.new("RGB", (20, 16), (i * 20, 0, 0)).save(root / "images" / f"a{i}.jpg")
        mask = torch.zeros(16, 20, dtype=torch.uint8)
        mask[4:8, 4:10] = 1 + i % 2
        mask[0, :] = 255
        Image.fromarray(mask.numpy()).save(root / "masks" / f"a{i}.png")
    splits = load_segfolder(str(root), None, 0.2, 0)
    assert splits.task == "segmentation" and splits.classes == ["class0", "class1", "class2"]
    assert len(splits.train) == 8 and len(splits.val) == 2
    mask = splits.train.target(0)
    assert mask.shape == (16, 20) and set(mask.unique().tolist()) <= {0, 1, 2, 255}
    spec = {"size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    img, m = build_transforms("flip_crop", spec, True, "segmentation")(splits.train.load(0), mask)
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and m.shape == (32, 32)
    assert set(m.unique().tolist()) <= {0, 1, 2, 255}  # nearest: no blended class values
    with pytest.raises(BadImage, match="does not match its image"):
        build_transforms("none", spec, False, "segmentation")(splits.train.load(0), mask[:8])
    (root / "images" / "orphan.jpg").write_bytes((root / "images" / "a0.jpg").read_bytes())
    from trainer.errors import UserError

    with pytest.raises(UserError, match="have no mask of the same name"):
        load_segfolder(str(root), None, 0.2, 0)


def test_torch_cross_entropy_as_the_loss_takes_the_data_ignore_index_or_its_own_default(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

    cfg = compose_cfg(*TINY, "trainer.epochs=1", "finetune.head_epochs=0", "loss._target_=torch.nn.CrossEntropyLoss")
    run = build_run(cfg, run_dir=tmp_path / "a")
    assert type(run.loss_fn) is torch.nn.CrossEntropyLoss and run.loss_fn.ignore_index == -100  # torch's default
    assert run.fit()["finished"]
    cfg = compose_cfg(*TINY, "loss._target_=torch.nn.CrossEntropyLoss", "data.ignore_index=3")
    assert build_run(cfg, run_dir=tmp_path / "b").loss_fn.ignore_index == 3

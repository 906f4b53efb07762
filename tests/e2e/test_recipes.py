"""Training recipes: weight EMA, early stopping, augmentation policies, mixup/cutmix, the balanced
sampler. Each changes what it should, and resume stays exact with it on."""

from __future__ import annotations

import pytest
import torch
from runner import final_tensors, interrupt_and_resume
from support import TINY


def test_ema_weights_differ_from_the_trained_ones_and_are_what_evaluation_scores(compose_cfg, tmp_path):
    from trainer.loop.build import build_run
    from trainer.runs.checkpoint import inference_weights, load_checkpoint

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
    from trainer.loop.build import build_run

    run = build_run(compose_cfg(*TINY, "trainer.ema_decay=0.9998"), run_dir=tmp_path)
    decay = run.ema.ema.get_decay
    assert decay(1) == 0.0 and 0 < decay(10) < 0.9 < decay(10_000) <= 0.9998


@pytest.mark.slow
def test_a_run_with_ema_resumes_exactly(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

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

    from trainer.loop.build import build_run
    from trainer.runs.checkpoint import is_finished

    # lr ~0: nothing improves after the first epoch, so patience 1 stops after epoch 2 of 5
    cfg = compose_cfg(*TINY, "trainer.epochs=5", "optimizer.lr=1e-12", "trainer.early_stop_patience=1")
    with caplog.at_level("INFO", logger="trainer"):
        summary = build_run(cfg, run_dir=tmp_path).fit()
    assert summary["epochs_done"] == 2 and summary["best_epoch"] == 1 and summary["finished"]
    assert "early stop after epoch 2 of 5" in caplog.text
    assert is_finished(tmp_path)  # resume=auto and sweep re-runs pass it by
    caplog.clear()
    again = build_run(OmegaConf.merge(cfg, {"resume": str(tmp_path / "checkpoints" / "last.pt")}), run_dir=tmp_path)
    with caplog.at_level("INFO", logger="trainer"):
        assert again.fit()["epochs_done"] == 2
    assert "stopped early at epoch 2" in caplog.text


@pytest.mark.parametrize(
    ("augment", "policy"),
    [("randaugment", "RandAugment"), ("trivialaugment", "TrivialAugmentWide"), ("autoaugment", "AutoAugment")],
)
def test_augment_policies_and_random_erasing_are_seeded_per_sample(augment, policy):
    from trainer.data.datasets import make_fake
    from trainer.data.loaders import TransformedImages
    from trainer.data.transforms import build_transforms

    splits = make_fake(num_classes=2, train_size=8, val_size=2, image_size=48, seed=0)
    # bicubic, as many timm models ask: the policies' rotations must still work on tensors
    spec = {"size": 32, "crop_pct": 1.0, "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    tf = build_transforms(augment, spec, True, normalize=False, random_erasing=1.0)
    for epoch in range(8):  # enough draws that the rotate / shear ops come up
        for i in range(len(splits.train)):
            TransformedImages(splits.train, tf, seed=1)[(epoch, i)]
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", policy, "RandomErasing"]
    plain = TransformedImages(splits.train, build_transforms("flip_crop", spec, True, normalize=False), seed=3)
    data = TransformedImages(splits.train, tf, seed=3)
    a, b, other_epoch = data[(0, 1)][0], data[(0, 1)][0], data[(1, 1)][0]
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, other_epoch)  # the same draw for (epoch, sample) only
    assert not torch.equal(a, plain[(0, 1)][0])
    assert (a == 0).all(dim=0).any()  # the erased box is black on every channel


def test_mixup_and_cutmix_give_soft_targets_seeded_per_batch(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

    run = build_run(compose_cfg(*TINY, "data.mixup=0.4", "data.cutmix=1.0", "trainer.epochs=2"), run_dir=tmp_path)
    x, y, _ = next(iter(run.inputs.train(0, 0)))
    mx, my = run.mixing(x, y, 0, 0)
    again = run.mixing(x, y, 0, 0)
    assert my.shape == (x.shape[0], 4) and my.dtype.is_floating_point
    assert torch.allclose(my.sum(1), torch.ones(x.shape[0])) and (my.max(1).values < 1).any()  # mixed labels
    assert torch.equal(mx, again[0]) and torch.equal(my, again[1])
    assert not torch.equal(mx, x)
    assert run.fit()["history"][-1]["val/acc"] > 0.25  # trains, scored on the hard labels


def test_balanced_sampler_draws_each_class_about_equally_and_resumes_mid_epoch():
    from trainer.data.loaders import BalancedSampler

    targets = [0] * 90 + [1] * 9 + [2] * 1  # 90 / 9 / 1
    sampler = BalancedSampler(targets, seed=4)
    counts = torch.zeros(3)
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn = [i for _, i in sampler]
        assert len(drawn) == 100
        counts += torch.bincount(torch.tensor([targets[i] for i in drawn]), minlength=3)
    share = counts / counts.sum()
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.05), share
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.set_epoch(3, start=40)
    assert list(sampler) == whole[40:]
    two = [BalancedSampler(targets, seed=4, rank=r, world_size=2) for r in (0, 1)]
    for s in two:
        s.set_epoch(3)
    assert sorted(i for s in two for _, i in s) == sorted(i for _, i in whole)  # the ranks split one draw


@pytest.mark.slow
def test_a_run_with_mixup_cutmix_and_the_balanced_sampler_resumes_exactly(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

    recipe = ("data.mixup=0.2", "data.cutmix=1.0", "data.sampler=balanced", "data.augment=randaugment")
    cfg = compose_cfg(*TINY, "trainer.epochs=2", "finetune.head_epochs=0", *recipe)
    build_run(cfg, run_dir=tmp_path / "a").fit()
    expected = final_tensors(tmp_path / "a")
    resumed = interrupt_and_resume(cfg, tmp_path / "b", at_call=5)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("data.mixup=0.2", "loss=nll"), "does not take"),
        (("data.mixup=0.2", "data.task=binary", "data.dataset.num_classes=2", "loss=bce"), "multiclass tasks only"),
        (("data.cutmix=1.0", "finetune.cache_features=true"), "drop one of them"),
        (("data=shapes", "model=unet_resnet34", "data.augment=randaugment"), "classification only"),
        (("data.sampler=balanced", "data.task=multilabel", "loss=bce"), "one class per image"),
    ],
)
def test_recipes_that_cannot_work_are_refused_with_the_reason(compose_cfg, tmp_path, args, says):
    from trainer.errors import UserError
    from trainer.loop.build import build_run

    with pytest.raises(UserError, match=says):
        build_run(compose_cfg(*TINY, *args), run_dir=tmp_path)


def test_image_size_auto_follows_the_images_the_model_and_the_device():
    from trainer.data.transforms import auto_image_size

    assert auto_image_size(28, 224, "cuda")[0] == 64  # 2x28 = 56 -> 64
    assert auto_image_size(8, 224, "cuda")[0] == 64  # tiny: at least 64
    assert auto_image_size(100, 224, "cuda")[0] == 224  # 200 -> 224, not past the model's size
    assert auto_image_size(500, 224, "cuda")[0] == 224  # photos: the pretrained size
    assert auto_image_size(500, 224, "cpu") == (160, auto_image_size(500, 224, "cpu")[1])
    assert "capped at 160" in auto_image_size(500, 224, "cpu")[1]
    assert auto_image_size(None, 288, "cuda")[0] == 288


def test_image_size_auto_reads_the_folder_and_says_what_it_chose(compose_cfg, tmp_path, caplog):
    from PIL import Image

    from trainer.loop.build import build_run

    for c, colour in enumerate(("red", "blue")):
        (tmp_path / "data" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            image = Image.new("RGB", (28, 30), colour)
            image.putpixel((0, 0), (i, i, i))  # six images, not six copies of one
            image.save(tmp_path / "data" / f"c{c}" / f"{i}.png")
    args = [a for a in TINY if a != "data=fake"]
    with caplog.at_level("INFO", logger="trainer"):
        run = build_run(
            compose_cfg(*args, "data=imagefolder", f"data.root={tmp_path / 'data'}", "data.val_split=0.5"),
            run_dir=tmp_path / "run",
        )
    assert run.loaders.input_spec["size"] == 64
    assert "data.image_size=auto: 64 px (small images (28 px median short side)" in caplog.text
    x, _, _ = next(iter(run.inputs.train(0, 0)))
    assert x.shape[-2:] == (64, 64)


@pytest.mark.slow
def test_plan_true_says_what_the_run_will_do_and_cost_then_stops_without_training(tmp_path):
    from runner import train

    run_dir = tmp_path / "run"
    out = train([*TINY, "plan=true", "finetune.head_epochs=1", f"hydra.run.dir={run_dir}"], tmp_path)
    text = out.stdout + out.stderr
    assert "plan: 8 epoch(s) in 2 stage(s); 256 train / 64 val images at 32 px" in text
    assert "stage 1: epochs 1-1, the head only" in text and "stage 2: epochs 2-8, all layers" in text
    assert "estimate, stage 1:" in text and "estimate, stage 2:" in text and "estimate, whole run: ~" in text
    assert (run_dir / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
    assert "nothing was trained" in text


def test_every_run_logs_its_plan_and_an_estimate_from_its_first_steps(compose_cfg, tmp_path, caplog):
    from trainer.loop.build import build_run

    run = build_run(compose_cfg(*TINY, "trainer.epochs=2", "finetune.head_epochs=1"), run_dir=tmp_path)
    with caplog.at_level("INFO", logger="trainer"):
        run.fit()
    assert "plan: 2 epoch(s) in 2 stage(s)" in caplog.text
    assert caplog.text.count("estimate, stage") == 2  # once per stage, measured on its own steps
    assert run.estimate.seconds_per_step is not None  # measured (its value is the machine's, not asserted)


@pytest.mark.parametrize("head_epochs", [1, 0])  # 0: the test runs in the stage the run starts in
def test_lr_find_leaves_the_run_unchanged_and_suggests_an_lr_inside_its_ramp(
    compose_cfg, tmp_path, monkeypatch, head_epochs
):
    from trainer.loop import lr_find
    from trainer.loop.build import build_run
    from trainer.loop.lr_find import find_lr

    monkeypatch.setattr(lr_find, "STEPS", 30)

    run = build_run(compose_cfg(*TINY, f"finetune.head_epochs={head_epochs}"), run_dir=tmp_path)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    lrs_before = [g["lr"] for g in run.optimizer.param_groups]
    schedule_before = run.schedule.state_dict()
    rng = torch.get_rng_state()
    lr = find_lr(run)
    assert all(torch.equal(v, before[k]) for k, v in run.model.state_dict().items())
    assert [g["lr"] for g in run.optimizer.param_groups] == lrs_before and run.state.stage_idx == 0
    assert run.schedule.state_dict() == schedule_before
    assert torch.equal(torch.get_rng_state(), rng)
    rows = (tmp_path / "lr_find.csv").read_text().splitlines()
    ramp = [float(r.split(",")[1]) for r in rows[1:]]
    assert rows[0] == "step,lr,loss,smoothed" and ramp == sorted(ramp) and ramp[0] <= lr <= ramp[-1]
    assert (tmp_path / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def test_the_suggestion_is_the_steepest_descent_before_the_minimum():
    from trainer.loop.lr_find import suggest

    lrs = [10.0**e for e in range(-6, 2)]  # 1e-6 .. 10
    loss = [2.0, 2.0, 1.9, 1.2, 0.9, 0.8, 1.5, 9.0]  # falls fastest 1e-4 -> 1e-3, lowest at 1e-1
    assert suggest(lrs, loss) == pytest.approx(1e-4)
    # falls fastest at the first lr, lowest at 8e-3: at most a tenth of that
    assert suggest([1e-3, 2e-3, 4e-3, 8e-3], [2.0, 1.0, 0.9, 0.85]) == pytest.approx(8e-4)


@pytest.mark.slow
def test_optimizer_lr_auto_trains_with_the_found_lr_and_saves_it_in_the_config(compose_cfg, tmp_path, monkeypatch):
    import yaml

    from trainer.loop import lr_find
    from trainer.loop.build import build_run
    from trainer.runs.checkpoint import load_checkpoint

    monkeypatch.setattr(lr_find, "STEPS", 30)
    run = build_run(compose_cfg(*TINY, "trainer.epochs=1", "optimizer.lr=auto"), run_dir=tmp_path)
    found = run.plan.lr
    assert found != 1e-3 and (tmp_path / "lr_find.csv").is_file()
    assert max(g.get("initial_lr", g["lr"]) for g in run.optimizer.param_groups) == pytest.approx(found)
    run.fit()
    saved = yaml.safe_load(load_checkpoint(tmp_path / "checkpoints" / "last.pt")["config"])
    assert saved["optimizer"]["lr"] == pytest.approx(found)


@pytest.mark.slow
def test_a_distilled_students_loss_uses_the_teacher(compose_cfg, tmp_path):
    import torch.nn.functional as F

    from trainer.errors import UserError
    from trainer.loop.build import build_run

    build_run(compose_cfg(*TINY, "trainer.epochs=1"), run_dir=tmp_path / "teacher").fit()
    cfg = compose_cfg(
        *TINY,
        "trainer.epochs=1",
        f"distill.teacher={tmp_path / 'teacher'}",
        "distill.alpha=0.7",
        "distill.temperature=2.0",
        "model.drop_rate=0.0",
    )
    student = build_run(cfg, run_dir=tmp_path / "student")
    teacher = student.teacher
    assert teacher.enabled and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    frozen = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    x, y, _ = next(iter(student.inputs.train(0, 0)))
    student.teacher.see(x)
    with torch.no_grad():
        out = student.forward(x)
    hard = student.loss_fn(out, y)
    soft = F.kl_div(F.log_softmax(out / 2, 1), F.softmax(teacher.logits / 2, 1), reduction="batchmean")
    assert float(student.step.loss_fn(out, y)) == pytest.approx(float(0.3 * hard + 0.7 * 4 * soft), rel=1e-5)
    assert float(soft) > 0  # the teacher's view differs from the untrained student's
    student.fit()
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.model.state_dict().items())

    with pytest.raises(UserError, match="neither a checkpoint nor a timm model"):
        build_run(compose_cfg(*TINY, "distill.teacher=no_such_model_xyz"), run_dir=tmp_path / "c")
    with pytest.raises(UserError, match="must know the student's classes"):
        build_run(
            compose_cfg(*TINY, "data.dataset.num_classes=3", f"distill.teacher={tmp_path / 'teacher'}"),
            run_dir=tmp_path / "d",
        )


@pytest.mark.parametrize("loss, key", [("cross_entropy", "weight"), ("focal", "alpha"), ("bce", "pos_weight")])
def test_balanced_class_weights_come_from_the_long_tailed_training_split(compose_cfg, tmp_path, caplog, loss, key):
    import numpy as np

    from trainer.loop.build import build_run

    tiny = [o for o in TINY if not o.startswith("data=")]
    cfg = compose_cfg(*tiny, "data=digits", "+data.dataset.imbalance=0.1", f"loss={loss}", f"loss.{key}=balanced")
    with caplog.at_level("INFO", logger="trainer"):
        run = build_run(cfg, run_dir=tmp_path)
    from trainer.data.datasets import load_digits

    counts = np.bincount(np.array(load_digits(imbalance=0.1).train.targets), minlength=10)  # the same split
    assert counts[0] > 5 * counts[9]  # long-tailed: digit 9 keeps a tenth
    if key == "pos_weight":
        expected = (counts.sum() - counts) / counts
    else:
        expected = (1 / counts) / (1 / counts).mean()
    assert torch.allclose(getattr(run.loss_fn, key), torch.tensor(expected, dtype=torch.float32), rtol=1e-4)
    assert f"loss.{key}=balanced from the training split's counts" in caplog.text

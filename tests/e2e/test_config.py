"""Every option of every group composes and builds."""

from __future__ import annotations

import pytest
import torch
from support import CONF, HANG_GUARD, TINY

GROUPS = {
    g: sorted(p.stem for p in (CONF / g).glob("*.yaml") if not p.stem.startswith("_"))
    for g in ("model", "data", "loss", "optimizer", "scheduler")
}


def test_required_options_exist():
    assert {
        "efficientnet_lite0",
        "resnet18",
        "resnet34",
        "resnet50",
        "mobilenetv3_large_100",
        "convnext_tiny",
        "vit_small_patch16_224",
        "tv_resnet50",
    } <= set(GROUPS["model"])
    assert {"cross_entropy", "bce", "dice", "dice_bce", "iou", "focal"} <= set(GROUPS["loss"])
    assert {"sgd", "adam", "adamw", "rmsprop"} <= set(GROUPS["optimizer"])
    assert {"none", "step", "multistep", "exponential", "cosine", "onecycle", "plateau", "warmup_cosine"} <= set(
        GROUPS["scheduler"]
    )
    assert {"digits", "imagefolder", "fake"} <= set(GROUPS["data"])


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}")
    assert cfg[group] is not None
    for key in ("trainer", "checkpoint", "finetune", "seed", "resume"):
        assert key in cfg


@pytest.mark.parametrize("option", GROUPS["model"])
def test_every_model_builds_with_a_new_head(compose_cfg, option):
    from hydra.utils import instantiate

    cfg = compose_cfg(f"model={option}", "model.pretrained=false")
    segmentation = bool(cfg.model.get("decoder"))
    built = instantiate(cfg.model)(num_classes=7, task="segmentation" if segmentation else "multiclass")
    heads = [p for n, p in built.model.named_parameters() if n in built.head_names]
    assert any(p.ndim == (4 if segmentation else 2) and p.shape[0] == 7 for p in heads)
    assert {"mean", "std", "input_size", "interpolation"} <= set(built.data_config)


def _tiny_model():
    from trainer.models import create_model

    return create_model(name="test_resnet", pretrained=False, num_classes=4)


@pytest.mark.parametrize("option", GROUPS["optimizer"])
def test_every_optimizer_builds_and_steps(compose_cfg, option, tmp_path):
    from trainer.errors import UserError
    from trainer.loop.build import build_run

    cfg = compose_cfg(f"optimizer={option}", *TINY, "finetune.head_epochs=0")
    if option == "sparse_adam":  # image models have dense gradients only
        with pytest.raises(UserError, match="optimizer=sparse_adam updates only parameters with sparse gradients"):
            build_run(cfg, run_dir=tmp_path)
        return
    run = build_run(cfg, run_dir=tmp_path)
    opt = run.optimizer
    assert type(opt).__name__.lower().replace("_", "") == option.replace("_", "")
    names = {g["name"] for g in opt.param_groups}
    if option == "lbfgs":  # one group: torch's L-BFGS takes no per-group options
        assert names == {"all"} and opt.param_groups[0]["initial_lr"] == cfg.optimizer.lr
    else:
        assert names == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
        for g in opt.param_groups:
            if g["name"].endswith("no_decay"):
                assert g["weight_decay"] == 0.0
            assert g.get("initial_lr", g["lr"]) == pytest.approx(
                cfg.optimizer.lr * (cfg.finetune.backbone_lr_mult if g["part"] == "backbone" else 1)
            )
    before = [p.detach().clone() for p in run.model.parameters()]
    x = torch.randn(2, 3, 32, 32)

    def closure():
        opt.zero_grad()
        loss = run.model(x).square().mean()
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
    assert any(not torch.equal(b, p) for b, p in zip(before, run.model.parameters()))


@pytest.mark.parametrize("option", GROUPS["scheduler"])
def test_every_scheduler_builds_steps_and_saves(compose_cfg, option, tmp_path):
    from trainer.loop.build import schedule_builder
    from trainer.loop.optim import param_groups

    cfg = compose_cfg(f"scheduler={option}", *TINY)
    built = _tiny_model()
    opt = torch.optim.SGD(param_groups(built.model, built.head_names, 0.1, 0.0), lr=0.1)
    sched = schedule_builder(cfg)(opt, 5, 4)
    assert sched.interval == ("metric" if option == "plateau" else str(cfg.schedule.interval))
    lrs = []
    for step in range(20):
        opt.step()
        sched.after_step()
        if (step + 1) % 5 == 0:
            sched.after_epoch(0.5)
        lrs.append(opt.param_groups[-1]["lr"])
    assert all(lr >= 0 and lr == lr for lr in lrs)
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True) is not None


@pytest.mark.parametrize("option", GROUPS["loss"])
def test_every_loss_builds_and_gives_finite_gradients(compose_cfg, option):
    from hydra.utils import instantiate

    loss_fn = instantiate(compose_cfg(f"loss={option}").loss)  # multiclass: every option serves it
    logits = torch.randn(8, 5, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, 0, 1, 1])
    loss = loss_fn(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # a confident, correct prediction has a lower loss than a confident, wrong one
    good = torch.nn.functional.one_hot(target, 5).float() * 20
    bad = torch.nn.functional.one_hot((target + 1) % 5, 5).float() * 20
    assert loss_fn(good, target) < loss_fn(bad, target)


def test_plot_lr_draws_the_schedule_without_training(tmp_path):
    import subprocess
    import sys

    from PIL import Image
    from support import REPO, offline_env

    out = tmp_path / "lr.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "plot_lr.py"),
            "--out",
            str(out),
            "scheduler=onecycle",
            "data=fake",
            "trainer.epochs=3",
            "finetune.head_epochs=0",
            "optimizer.lr=0.01",
        ],
        capture_output=True,
        text=True,
        env=offline_env(tmp_path),
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr
    head = next(line for line in proc.stdout.splitlines() if line.startswith("lr/head"))
    peak = float(head.split("peak ")[1].split()[0])
    assert peak == pytest.approx(0.01, rel=0.01) and "(24 steps, 8 per epoch" in head
    assert float(head.split("last ")[1].split()[0]) < 1e-5  # one-cycle ends near zero
    width, height = Image.open(out).size  # matplotlib at 100 dpi: readable at 100% zoom
    assert width >= 700 and height >= 350
    assert not (tmp_path / "outputs").exists()

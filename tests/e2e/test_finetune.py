"""Transfer learning: weight files, freezing by name, BatchNorm policy, stages, layer decay, linear probe."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from support import REPO, TINY

from trainer.errors import UserError
from trainer.models import create_model
from trainer.models.freeze import apply_freeze, resolve_freeze


def _model(name: str, source: str = "timm", **extra):
    return create_model(name=name, source=source, num_classes=3, **{"pretrained": False, **extra})


def _names(model, *prefixes):
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


# model -> (stem prefixes, stages.0 prefixes, stages.1 prefixes)
TIMM_PARTS = {
    "test_resnet": (("conv1.", "bn1."), ("layer1.",), ("layer2.",)),
    "test_efficientnet": (("conv_stem.", "bn1."), ("blocks.0.",), ("blocks.1.",)),
    "test_convnext": (("stem.",), ("stages.0.",), ("stages.1.",)),
    "test_vit": (("cls_token", "pos_embed", "patch_embed.", "reg_token"), ("blocks.0.",), ("blocks.1.",)),
}


@pytest.mark.parametrize("name", list(TIMM_PARTS))
def test_freeze_specs_name_exactly_the_right_parameters_on_timm(name):
    built = _model(name)
    m, head = built.model, built.head_names
    stem, s0, s1 = (_names(m, *p) for p in TIMM_PARTS[name])
    assert stem and s0 and s1
    backbone = {n for n, _ in m.named_parameters()} - head
    assert resolve_freeze("backbone", m, head) == backbone
    assert resolve_freeze("none", m, head) == set()
    assert resolve_freeze(["stem", "stages.0"], m, head) == stem | s0
    assert resolve_freeze({"until": "stages.1"}, m, head) == stem | s0
    first_module = next(iter(s1)).split(".")[0]
    assert resolve_freeze([first_module], m, head) == _names(m, first_module + ".")  # plain module names too
    regex = resolve_freeze({"regex": r"\.bias$"}, m, head)
    assert regex == {n for n in backbone if n.endswith(".bias")}
    counts = apply_freeze(m, head, stem | s0)
    assert {n for n, p in m.named_parameters() if not p.requires_grad} == stem | s0
    assert counts["frozen"] == sum(p.numel() for n, p in m.named_parameters() if n in stem | s0)


def test_freeze_specs_on_a_torchvision_model():
    built = _model("resnet18", source="torchvision")
    m, head = built.model, built.head_names
    assert head == {"fc.weight", "fc.bias"}
    assert resolve_freeze(["conv1", "layer1"], m, head) == _names(m, "conv1.", "layer1.")
    assert resolve_freeze({"until": "layer3"}, m, head) == _names(m, "conv1.", "bn1.", "layer1.", "layer2.")
    with pytest.raises(UserError, match=r"no part named 'stem'.*layer1"):
        resolve_freeze(["stem"], m, head)


def test_head_is_never_frozen_and_bad_specs_are_refused():
    built = _model("test_resnet")
    m, head = built.model, built.head_names
    frozen = resolve_freeze({"regex": "^fc|^conv1"}, m, head)
    assert frozen == _names(m, "conv1.") and not frozen & head
    with pytest.raises(UserError, match="matches no parameter"):
        resolve_freeze({"regex": "nothing_like_this"}, m, head)
    with pytest.raises(UserError, match="no part named 'stages.9'"):
        resolve_freeze(["stages.9"], m, head)


@pytest.mark.parametrize("mode", ["frozen_stats", "frozen"])
def test_batchnorm_policy_survives_train_and_an_epoch(compose_cfg, tmp_path, mode):
    from trainer.loop.build import build_run

    run = build_run(
        compose_cfg(*TINY, "trainer.epochs=1", "finetune.head_epochs=0", f"finetune.bn={mode}"), run_dir=tmp_path
    )
    bns = [(n, m) for n, m in run.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns}
    affine = {n: m.weight.detach().clone() for n, m in bns}
    run.model.train()
    assert all(not m.training for _, m in bns)
    run.train_one_epoch(0)
    for n, m in bns:
        assert torch.equal(m.running_mean, stats[n][0]) and torch.equal(m.running_var, stats[n][1]), n
    changed = [n for n, m in bns if not torch.equal(m.weight, affine[n])]
    if mode == "frozen_stats":
        assert changed, "frozen_stats keeps affine parameters trainable"
    else:
        assert not changed and all(not m.weight.requires_grad for _, m in bns)


def test_weights_file_with_module_prefix_loads_and_sha_is_recorded(tmp_path):
    from safetensors.torch import save_file

    src = _model("test_resnet").model
    torch.manual_seed(123)
    for p in src.parameters():
        p.data.normal_()
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    save_file({k.removeprefix("module."): v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for path in (tmp_path / "w.pth", tmp_path / "w.safetensors"):
        built = _model("test_resnet", weights=str(path), pretrained=True)
        got = built.model.state_dict()
        for k, v in src.state_dict().items():
            if k.startswith("fc."):
                assert got[k].shape[0] == 3  # the new head, not the file's
            else:
                assert torch.equal(got[k], v), k
        assert len(built.weights["sha256"]) == 64 and built.weights["source"] == f"file:{path}"


def test_weights_file_for_another_architecture_is_refused(tmp_path):
    torch.save(_model("test_efficientnet").model.state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(UserError, match=r"does not fit test_resnet: \d+ missing .* unexpected"):
        _model("test_resnet", weights=str(tmp_path / "effnet.pth"), pretrained=True)


def test_richer_head_from_config():
    built = _model("test_resnet", head={"hidden": 16, "dropout": 0.2})
    head = built.head
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(96, 16), (16, 3)]
    assert any(isinstance(m, torch.nn.Dropout) for m in head.modules())
    assert built.head_names == {f"{built.head_path}.{n}" for n, _ in head.named_parameters()}


STAGES = "finetune.stages=[{epochs: 1, train: head, lr: 0.003}, {epochs: 2, train: all, backbone_lr_mult: 0.1}]"


def test_stages_change_the_trainable_set_and_learning_rates_at_the_right_epoch(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

    run = build_run(compose_cfg(*TINY, "trainer.epochs=3", "optimizer.lr=0.001", STAGES), run_dir=tmp_path)
    seen = []
    original = run.enter_stage

    def spy(i):
        original(i)
        trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
        lrs = {g["name"]: g["initial_lr"] for g in run.optimizer.param_groups}
        seen.append((run.state.epoch, i, trainable == run.head_names, lrs))

    run.enter_stage = spy
    spy(0)
    run.fit()
    assert [(e, i, head_only) for e, i, head_only, _ in seen] == [(0, 0, True), (1, 1, False)]
    assert seen[0][3] == {"head": 0.003, "head_no_decay": 0.003}
    assert seen[1][3]["head"] == pytest.approx(0.001) and seen[1][3]["backbone"] == pytest.approx(0.0001)


def test_stage_plan_errors_are_clear(compose_cfg, tmp_path):
    from trainer.loop.stages import plan_stages

    with pytest.raises(UserError, match="cover 5 epochs but trainer.epochs=3"):
        plan_stages([{"epochs": 2, "train": "head"}, {"epochs": 3}], 0, 3)
    with pytest.raises(UserError, match="unknown key"):
        plan_stages([{"epochs": 3, "speed": 2}], 0, 3)
    assert [s.epochs for s in plan_stages([{"epochs": 1, "train": "head"}, {"train": "all"}], 0, 4)] == [1, 3]


def _tensors(run):
    out = {f"m.{k}": v for k, v in run.model.state_dict().items()}
    for i, st in run.optimizer.state_dict()["state"].items():
        out.update({f"o.{i}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return out


def test_resume_exactly_at_a_stage_boundary_equals_an_unbroken_run(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

    cfg = compose_cfg(*TINY, "trainer.epochs=3", STAGES)
    unbroken = build_run(cfg, run_dir=tmp_path / "a")
    unbroken.fit()

    first = build_run(cfg, run_dir=tmp_path / "b")
    first.state.epochs = 1  # stop after stage 1's last epoch: its checkpoint holds the head-only optimizer
    first.fit()
    resumed = build_run(
        OmegaConf.merge(cfg, {"resume": str(tmp_path / "b" / "checkpoints" / "last.pt")}), run_dir=tmp_path / "b"
    )
    assert resumed.state.epoch == 1 and resumed.state.stage_idx == 0
    resumed.fit()
    a, b = _tensors(unbroken), _tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_layer_decay_scales_lr_by_depth(compose_cfg, tmp_path):
    from trainer.loop.build import build_run

    run = build_run(
        compose_cfg(
            *TINY,
            "finetune.head_epochs=0",
            "finetune.layer_decay=0.5",
            "finetune.backbone_lr_mult=1.0",
            "optimizer.lr=0.01",
        ),
        run_dir=tmp_path,
    )
    groups = [g for g in run.optimizer.param_groups if not g["name"].endswith("no_decay")]
    mults = [g["lr_mult"] for g in groups]
    assert mults == sorted(mults) and mults[-1] == 1.0 and groups[-1]["part"] == "head"
    assert mults[0] == pytest.approx(0.5 ** (len(groups) - 1))
    assert all(not g["weight_decay"] for g in run.optimizer.param_groups if g["name"].endswith("no_decay"))


@pytest.mark.parametrize("cache", [False, True])
def test_linear_probe_runs_the_backbone_without_gradients(compose_cfg, tmp_path, cache):
    from trainer.loop.build import build_run

    run = build_run(
        compose_cfg(
            *TINY,
            "trainer.epochs=2",
            "finetune.head_epochs=0",
            "model.freeze=backbone",
            f"finetune.cache_features={cache}",
            "optimizer.lr=0.1",
        ),
        run_dir=tmp_path,
    )
    assert run.probe
    backbone = {n: p.detach().clone() for n, p in run.model.named_parameters() if n not in run.head_names}
    bn = next(m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    summary = run.fit()
    for n, p in run.model.named_parameters():
        if n not in run.head_names:
            assert p.grad is None and torch.equal(p, backbone[n]), n
    assert torch.equal(bn.running_mean, stats)
    first, last = summary["history"][0], summary["history"][-1]
    assert last["train/loss"] < first["train/loss"] and summary["best"] > 0.4, summary["history"]  # chance 0.25
    if cache:
        from trainer.loop.steps import Forward, ImageInputs

        cached = run.evaluate()[0]  # the head on cached features
        run.forward, run.inputs = Forward(run.model, run.model), ImageInputs(run.loaders, run.device, run.memory_format)
        assert run.evaluate()[0]["val/acc"] == pytest.approx(cached["val/acc"])  # the whole model on the images


@pytest.mark.slow
def test_probe_benchmark_runs_in_quick_mode(tmp_path):

    from runner import python

    script = REPO / "scripts" / "bench_probe.py"
    proc = python([str(script), "--quick"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| linear probe") or line.startswith("| full")]
    assert len(rows) == 4 and rows[0].split("|")[3].strip() == "1.000"


@pytest.mark.parametrize(
    "name,head_path", [("mobilenet_v3_small", "classifier.3"), ("efficientnet_b0", "classifier.1")]
)
def test_torchvision_heads_are_found_whatever_they_are_called(name, head_path):
    built = _model(name, source="torchvision")
    assert built.head_path == head_path
    assert isinstance(built.head, torch.nn.Linear) and built.head.out_features == 3
    assert built.model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_hub_weights_are_read_from_the_cache_and_their_sha256_recorded(tmp_path, monkeypatch):
    """No network here: put a file where the torch hub cache keeps timm's test_resnet weights."""
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = "https://example.invalid/test_resnet_weights.pth"
    source = timm.create_model("test_resnet")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / "test_resnet_weights.pth")
    original = timm.create_model

    def create(name, pretrained=False, **kw):  # the same model, pointed at that cached file
        return original(name, pretrained=pretrained, pretrained_cfg_overlay={"url": url, "hf_hub_id": None}, **kw)

    monkeypatch.setattr(timm, "create_model", create)
    built = _model("test_resnet", pretrained=True)
    assert built.weights["source"] == f"hub:{url}" and len(built.weights["sha256"]) == 64
    got = built.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in source.state_dict().items() if not k.startswith("fc."))


def test_cache_features_auto_caches_a_probe_only_when_it_changes_no_result(compose_cfg, tmp_path):
    from trainer.loop.build import build_run
    from trainer.loop.steps import CachedInputs

    def probe(*extra):
        args = (*TINY, "trainer.epochs=2", "finetune.head_epochs=0", "model.freeze=backbone", "optimizer.lr=0.1")
        return build_run(compose_cfg(*args, *extra), run_dir=tmp_path / "_".join(extra))

    augmented = probe("data.augment=flip_crop")  # auto: caching would drop the augmentation
    assert not isinstance(augmented.inputs, CachedInputs)
    cached, plain = probe("data.augment=none"), probe("data.augment=none", "finetune.cache_features=false")
    assert isinstance(cached.inputs, CachedInputs) and not isinstance(plain.inputs, CachedInputs)
    a, b = cached.fit()["history"], plain.fit()["history"]
    for ra, rb in zip(a, b, strict=True):  # the same numbers: only the time differs
        for key in ("train/loss", "val/loss", "val/acc"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), key

"""data.batch_size=auto and trainer.effective_batch: the probe picks the largest batch under a memory
limit the test imposes (activation bytes counted by autograd's saved-tensor hooks on the CPU), running
out of memory is caught, the effective batch is kept by accumulation, and the probe leaves the model
and the random streams as it found them."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from support import TINY

from trainer.errors import UserError
from trainer.loop import batch_size as bs


def tiny_step() -> bs.ProbeStep:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    sample = (torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8), 1)
    return bs.ProbeStep(model, torch.nn.CrossEntropyLoss(), sample, torch.device("cpu"), _no_amp, torch.preserve_format)


def _no_amp():
    import contextlib

    return contextlib.nullcontext()


def saved_bytes(step: bs.ProbeStep, batch: int) -> int:
    """The bytes autograd keeps for the backward of ``step`` at ``batch``: the activations (what runs a
    device out of memory), counted by a saved-tensor hook."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(batch)
    return total


def limited(step: bs.ProbeStep, limit: int, calls: list[int]):
    """``fits`` under ``limit`` bytes of activations: above it the step runs out of memory (as the
    CUDA allocator would raise), at or below it the step trains."""

    def fits(batch: int) -> bool:
        calls.append(batch)
        try:
            if saved_bytes(step, batch) > limit:
                raise torch.OutOfMemoryError("imposed limit")
        except torch.OutOfMemoryError:
            return False
        return True

    return fits


@pytest.mark.parametrize("allowed", [2, 5, 24, 64])  # BatchNorm trains on 2 images or more
def test_the_probe_picks_the_largest_batch_under_an_imposed_limit(allowed):
    step = tiny_step()
    limit = saved_bytes(step, allowed)  # the test's own measurement of what `allowed` images need
    calls: list[int] = []
    chosen = bs.largest_fitting(limited(step, limit, calls), cap=256)
    assert chosen == allowed
    assert saved_bytes(step, chosen + 1) > limit  # and one more does not fit
    assert len(calls) <= 2 * math.ceil(math.log2(256)) + 1  # doubling, then bisection: not a linear scan


def test_the_cap_bounds_the_probe_and_nothing_fitting_is_a_clear_error():
    assert bs.largest_fitting(lambda b: True, cap=40) == 40
    with pytest.raises(UserError, match="not even one image fits"):
        bs.largest_fitting(lambda b: False, cap=64)


@pytest.mark.parametrize("wanted, largest", [(256, 48), (64, 64), (64, 100), (96, 40), (97, 30), (1000, 7)])
def test_the_effective_batch_is_kept_by_accumulation(wanted, largest):
    batch, acc = bs.split_effective(wanted, largest)
    assert batch <= largest
    assert batch * acc >= wanted
    if any(
        wanted % a == 0 and wanted // a <= largest
        for a in range(math.ceil(wanted / largest), 2 * math.ceil(wanted / largest) + 1)
    ):
        assert batch * acc == wanted
    assert acc <= 2 * math.ceil(wanted / largest)


def test_choose_splits_the_wanted_batch_over_processes_and_keeps_a_given_batch():
    c = bs.choose(48, "probe", wanted=256, accumulate=1, world_size=2)
    assert c.batch_size <= 48 and c.batch_size * c.accumulate * 2 == 256
    assert "effective batch 256" in c.why
    fixed = bs.choose(32, "data.batch_size=32", wanted=128, accumulate=1, probed=False)
    assert (fixed.batch_size, fixed.accumulate) == (32, 4)
    assert bs.choose(80, "probe", wanted=None, accumulate=3) == bs.BatchChoice(80, 3, "probe")


def test_on_a_cpu_the_smallest_batch_near_the_best_pace_is_chosen():
    pace = {8: 50.0, 16: 90.0, 32: 99.0, 64: 100.0}  # images per second
    size, why = bs.fastest_small_batch(lambda b: 1 / pace[b], (8, 16, 32, 64))
    assert size == 16  # 90 >= 0.9 x 100, and 8 is not
    assert "16: 90 img/s" in why


def test_the_probe_leaves_the_model_and_the_random_streams_untouched():
    step = tiny_step()
    before = {k: v.clone() for k, v in step.model.state_dict().items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    step.measure(lambda: [step(b) for b in (2, 4)])
    assert torch.equal(torch.rand(3), expected_draw)
    for k, v in step.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running statistics included
    assert all(p.grad is None for p in step.model.parameters())


def test_a_run_with_auto_and_an_effective_batch_saves_the_numbers_and_resume_keeps_them(compose_cfg, tmp_path):
    from omegaconf import OmegaConf

    from trainer.loop import build

    quick = [*TINY, "data.dataset.train_size=96", "data.dataset.val_size=32"]
    cfg = compose_cfg(*quick, "data.batch_size=auto", "trainer.effective_batch=48")
    run = build.build_run(cfg, run_dir=tmp_path)
    saved = OmegaConf.create(run.settings.config_yaml)
    batch, acc = int(saved.data.batch_size), int(saved.trainer.accumulate)
    assert batch <= max(bs.CPU_CANDIDATES) and batch * acc == 48  # on a CPU 48 fits: no accumulation needed
    assert run.loaders.batch_size == batch and run.accumulate == acc
    # a resume trains on with the checkpoint's numbers, not a new measurement
    cfg = compose_cfg(*quick, "data.batch_size=auto", "trainer.effective_batch=48")
    resumed = {"config": "data:\n  batch_size: 12\ntrainer:\n  accumulate: 4\n"}
    build.setup_batch_size(cfg, None, None, (torch.device("cpu"), "fp32"), None, resumed)
    assert (cfg.data.batch_size, cfg.trainer.accumulate) == (12, 4)


def built(compose_cfg, tmp_path, train_size, *overrides):
    from trainer.loop import build

    cfg = compose_cfg(*TINY, f"data.dataset.train_size={train_size}", "data.dataset.val_size=32", *overrides)
    return build.build_run(cfg, run_dir=tmp_path)


def test_a_given_batch_with_an_effective_batch_raises_accumulate(compose_cfg, tmp_path):
    run = built(compose_cfg, tmp_path, 64, "data.batch_size=8", "trainer.effective_batch=32")
    assert (run.loaders.batch_size, run.accumulate) == (8, 4)


def test_when_the_wanted_batch_does_not_fit_accumulation_rises_to_keep_it(compose_cfg, tmp_path, monkeypatch):
    from trainer.loop import build

    monkeypatch.setattr(build, "probe_largest", lambda step, device, cap: (16, "an imposed limit"))
    run = built(compose_cfg, tmp_path, 96, "data.batch_size=auto", "trainer.effective_batch=48")
    assert (run.loaders.batch_size, run.accumulate) == (16, 3)
    assert run.steps_per_epoch == math.ceil(len(run.loaders.train) / 3)

"""trainer.precision / trainer.channels_last = auto on a CPU: which variants are tried, the rule for a
short run, the measured choice and its memory (measurements imposed by the test, never timed)."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from trainer.loop import variant as variants
from trainer.loop.variant import Variant


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "variants.json"


def _convnet():
    return timm.create_model("test_resnet", pretrained=False, num_classes=3)


def _not_convnet():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))


def test_the_variants_tried_are_those_the_settings_cpu_and_model_leave():
    net = _convnet()
    assert set(map(str, variants.candidates("auto", "auto", net, bf16=True))) == {
        "fp32 NCHW",
        "fp32 channels_last",
        "bf16 NCHW",
        "bf16 channels_last",
    }
    assert list(map(str, variants.candidates("auto", "auto", net, bf16=False))) == ["fp32 NCHW", "fp32 channels_last"]
    assert list(map(str, variants.candidates("auto", "auto", _not_convnet(), bf16=True))) == ["fp32 NCHW", "bf16 NCHW"]
    assert list(map(str, variants.candidates("fp32", "auto", net, bf16=True))) == ["fp32 NCHW", "fp32 channels_last"]
    assert list(map(str, variants.candidates("auto", False, net, bf16=True))) == ["fp32 NCHW", "bf16 NCHW"]


def test_the_rule_takes_channels_last_and_bf16_except_for_small_depthwise_nets(monkeypatch):
    """What scripts/bench_cpu_variant.py measured fastest (docs/BENCHMARKS.md)."""
    for name, expected in [
        ("test_efficientnet", Variant("fp32", True)),  # depthwise, small
        ("test_resnet", Variant("bf16", True)),  # plain convolutions
        ("test_convnext", Variant("bf16", True)),  # depthwise but counted large below
    ]:
        net = timm.create_model(name, pretrained=False, num_classes=3)
        if name == "test_convnext":
            monkeypatch.setattr(variants, "BF16_MIN_PARAMS", 1)
        assert variants.rule(variants.candidates("auto", "auto", net, bf16=True), net) == expected, name
    flat = _not_convnet()  # a transformer's matmuls gain from bf16 at any size
    assert variants.rule(variants.candidates("auto", "auto", flat, bf16=True), flat) == Variant("bf16", False)
    assert variants.rule(variants.candidates("auto", "auto", flat, bf16=False), flat) == Variant("fp32", False)


def test_a_long_run_trains_in_the_fastest_measured_variant_and_the_next_run_remembers_it(cache):
    net = _convnet()
    options = variants.candidates("auto", "auto", net, bf16=True)
    imposed = {"fp32 NCHW": 0.30, "fp32 channels_last": 0.25, "bf16 NCHW": 0.20, "bf16 channels_last": 0.35}
    measured = []

    def measure(v):
        measured.append(str(v))
        return imposed[str(v)]

    chosen, why = variants.choose(options, net, "key", 1000, measure)
    assert chosen == Variant("bf16", False) and sorted(measured) == sorted(imposed)
    assert "bf16 NCHW 0.200 s/step" in why and str(cache) in why
    assert json.loads(cache.read_text())["key"]["variant"] == "bf16 NCHW"

    def never(v):
        raise AssertionError("measured again")

    again, why = variants.choose(options, net, "key", 1000, never)
    assert again == chosen and "before" in why
    other, _ = variants.choose(options, net, "another model", 1000, lambda v: imposed[str(v)] if v.channels_last else 1)
    assert other == Variant("fp32", True)


def test_a_short_run_takes_the_rule_without_measuring(cache):
    net = _convnet()
    options = variants.candidates("auto", "auto", net, bf16=True)

    def never(v):
        raise AssertionError("a short run measured")

    chosen, why = variants.choose(options, net, "key", variants.PROBE_MIN_STEPS - 1, never)
    assert chosen == variants.rule(options, net) and "short run" in why
    assert not cache.exists()


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b'{"key": {"variant": "fp64 sideways"}}'])
def test_a_cache_that_is_not_ours_is_ignored(cache, content):
    cache.parent.mkdir(parents=True)
    cache.write_bytes(content)
    net = _convnet()
    options = variants.candidates("auto", "auto", net, bf16=False)
    chosen, why = variants.choose(options, net, "key", 1000, lambda v: 0.1 if v.channels_last else 0.2)
    assert chosen == Variant("fp32", True) and "measured now" in why


def test_an_oversized_cache_is_not_read(cache, monkeypatch):
    monkeypatch.setattr(variants, "CACHE_LIMIT", 64)
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"key": {"variant": "fp32 NCHW"}, "padding": "x" * 100}))
    assert variants.read_cache() == {}


def test_timing_a_variant_keeps_the_median_step_and_leaves_the_model_as_it_was(monkeypatch):
    ticks = iter([0.0, 10.0, 12.0, 20.0, 21.0, 30.0, 35.0])  # warm-up start; then three steps of 2, 1 and 5 s
    monkeypatch.setattr(variants.time, "perf_counter", lambda: next(ticks))
    net = _convnet().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
    seconds = variants.time_step(net, torch.nn.CrossEntropyLoss(), lambda: (x, y), Variant("bf16", True))
    assert seconds == 2.0 and not net.training
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.is_contiguous() for p in net.parameters()) and all(p.grad is None for p in net.parameters())

"""The fast paths are correct: device-side normalization, compile, the benchmark script (no timing asserts)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from runner import train
from support import HANG_GUARD, REPO, TINY, metrics, offline_env


def test_uint8_batches_normalized_on_the_device_equal_the_plain_float_pipeline():
    from torch.utils.data import DataLoader

    from trainer.data.datasets import make_fake
    from trainer.data.device import DeviceBatches
    from trainer.data.loaders import TransformedImages, collate_skipping_bad
    from trainer.data.transforms import build_transforms

    splits = make_fake(num_classes=3, train_size=24, val_size=8, image_size=40, seed=1)
    spec = {
        "size": 32,
        "crop_pct": 0.9,
        "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    for train_mode in (False, True):
        plain = TransformedImages(splits.train, build_transforms("flip_crop", spec, train_mode), seed=5)
        raw = TransformedImages(splits.train, build_transforms("flip_crop", spec, train_mode, normalize=False), seed=5)
        keys = [(2, i) for i in range(len(raw))]  # (epoch, index): the same augmentation in both
        expected = torch.stack([plain[k][0] for k in keys])
        loader = DataLoader([raw[k] for k in keys], batch_size=10, collate_fn=collate_skipping_bad)
        batches = list(DeviceBatches(loader, torch.device("cpu"), spec["mean"], spec["std"], torch.channels_last))
        assert all(
            b[0].dtype == torch.float32 and b[0].is_contiguous(memory_format=torch.channels_last) for b in batches
        )
        got = torch.cat([b[0] for b in batches])
        assert raw[keys[0]][0].dtype == torch.uint8  # what travels from the workers
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
        assert torch.equal(torch.cat([b[1] for b in batches]), torch.tensor([plain[k][1] for k in keys]))


@pytest.mark.parametrize("drop_last", [True, False])
def test_batches_built_in_pieces_by_several_workers_equal_whole_batches(drop_last):
    """The workers build each batch together (pieces joined on the device): the same batches, in the
    same order, with the same undecodable images named, from the middle of an epoch too."""
    from torch.utils.data import DataLoader

    from trainer.data.datasets import make_fake
    from trainer.data.device import DeviceBatches
    from trainer.data.images import BadImage
    from trainer.data.loaders import (
        EpochSampler,
        MicroBatchLoader,
        TransformedImages,
        collate_skipping_bad,
        pieces_per_batch,
    )
    from trainer.data.transforms import build_transforms

    splits = make_fake(num_classes=3, train_size=70, val_size=8, image_size=36, seed=2)
    broken = {20, 21, 22, 23, 45}  # 20-23: a whole piece of batch 1 (unshuffled keys 16-31)
    images = splits.train
    load = images.load

    def flaky(index: int) -> torch.Tensor:
        if index in broken:
            raise BadImage(f"img{index}.jpg: broken")
        return load(index)

    images.load = flaky
    spec = {"size": 32, "crop_pct": 0.9, "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.25,) * 3}
    ds = TransformedImages(images, build_transforms("flip_crop", spec, True, normalize=False), seed=3)
    assert pieces_per_batch(16, 4) == 1 and pieces_per_batch(64, 4) == 4 and pieces_per_batch(256, 15) == 8
    for shuffle in (False, True):
        sampler = EpochSampler(len(ds), seed=0, shuffle=shuffle)
        whole = DataLoader(ds, batch_size=16, sampler=sampler, drop_last=drop_last, collate_fn=collate_skipping_bad)
        pieces = MicroBatchLoader(ds, sampler, 16, 4, drop_last, num_workers=2, collate_fn=collate_skipping_bad)
        for start in (0, 16):
            sampler.set_epoch(1, start=start)
            want = list(DeviceBatches(whole, torch.device("cpu"), spec["mean"], spec["std"]))
            got = list(DeviceBatches(pieces, torch.device("cpu"), spec["mean"], spec["std"]))
            assert len(got) == len(want) == len(pieces) == (70 - start) // 16 + (0 if drop_last else 1)
            for (gx, gy, gbad), (wx, wy, wbad) in zip(got, want):
                assert torch.equal(gx, wx) and torch.equal(gy, wy) and gbad == wbad
            named = [name for *_, bad in got for name in bad]
            assert len(named) == sum(1 for *_, bad in want for name in bad) and (shuffle or len(named) >= 4)
            assert shuffle or start or got[1][0].shape[0] == 12  # the broken piece left out


def test_jpegs_decoded_on_the_device_equal_jpegs_decoded_by_the_workers(tmp_path):
    """data.decode=device: the workers read the bytes and draw the augmentation from the JPEG header,
    decoding and resampling happen where DeviceBatches runs (here the CPU, on a GPU nvjpeg). Same
    pixels, same order, same targets; PNGs still decoded by the workers; a corrupt JPEG named."""
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader

    from trainer.data.datasets import load_imagefolder
    from trainer.data.device import DeviceBatches
    from trainer.data.loaders import EpochSampler, MicroBatchLoader, TransformedImages, collate_skipping_bad
    from trainer.data.resample import RawJpeg, collate_raw
    from trainer.data.transforms import build_transforms

    rng = np.random.default_rng(0)
    for i in range(22):
        folder = tmp_path / f"c{i % 2}"
        folder.mkdir(exist_ok=True)
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        img.save(folder / (f"{i}.png" if i == 5 else f"{i}.jpg"), quality=85)
    data = (tmp_path / "c1" / "7.jpg").read_bytes()
    (tmp_path / "c1" / "7.jpg").write_bytes(data[:200] + bytes(len(data) - 200))  # header kept, scan data gone
    splits = load_imagefolder(str(tmp_path), val_split=0.25, seed=0)
    spec = {"size": 32, "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.25,) * 3}
    for train_mode, images in ((True, splits.train), (False, splits.val)):
        tf = build_transforms("flip_crop", spec, train_mode, normalize=False)
        workers = TransformedImages(images, tf, seed=4)
        device = TransformedImages(images, tf, seed=4, decode_on_device=True)
        sampler = EpochSampler(len(images), seed=1, shuffle=train_mode)
        sampler.set_epoch(2)
        assert isinstance(device[(2, 0)][0], RawJpeg) or images.paths[0].endswith(".png")
        want = list(
            DeviceBatches(
                DataLoader(workers, batch_size=8, sampler=sampler, collate_fn=collate_skipping_bad),
                torch.device("cpu"),
                spec["mean"],
                spec["std"],
            )
        )
        on_device = DeviceBatches(
            MicroBatchLoader(device, sampler, 8, 2, False, num_workers=2, collate_fn=collate_raw),
            torch.device("cpu"),
            spec["mean"],
            spec["std"],
        )
        got = list(on_device)
        on_device.batched_resample = True  # what a GPU does: the batch resampled in a few matrix products
        batched = list(on_device)
        assert len(got) == len(batched) == len(want) >= (2 if train_mode else 1)
        for (gx, gy, gbad), (bx, by, bbad), (wx, wy, wbad) in zip(got, batched, want):
            assert torch.equal(gx, wx) and torch.equal(gy, wy) and torch.equal(by, wy)
            assert [b.split(":")[0] for b in gbad] == [b.split(":")[0] for b in wbad] == [b.split(":")[0] for b in bbad]
            # the workers resize uint8 in fixed point (torch's CPU kernel), the batched path in float32
            # as torch's CUDA kernel does (equal to it: test_batched_resampling_equals_torch_resize)
            levels = ((bx - wx) * spec["std"][0] * 255).abs()
            assert bx.shape == wx.shape and 0 < levels.mean() < 0.5
    named = [
        b
        for batch in got
        + list(
            DeviceBatches(
                DataLoader(
                    TransformedImages(
                        splits.train,
                        build_transforms("flip_crop", spec, True, normalize=False),
                        seed=4,
                        decode_on_device=True,
                    ),
                    batch_size=32,
                    collate_fn=collate_raw,
                ),
                torch.device("cpu"),
                spec["mean"],
                spec["std"],
            )
        )
        for b in batch[2]
    ]
    assert any("7.jpg" in b for b in named) and "7.jpg" in " ".join(splits.train.paths)


def test_batched_resampling_equals_torch_resize():
    """data.decode=device resamples a whole batch in a few matrix products: the same pixels as
    torch's antialiased resize in float (what v2 runs on a GPU) for crops, flips, resize + center
    crop (padded too), bilinear and bicubic, images of mixed sizes split into groups."""
    from torchvision.transforms import v2

    from trainer.data.resample import DeviceGeometry, apply_geometry, plan_resample, resample_batch

    torch.manual_seed(0)
    for mode in (v2.InterpolationMode.BICUBIC, v2.InterpolationMode.BILINEAR):
        pipelines = [
            v2.Compose(
                [v2.RandomResizedCrop((40, 48), scale=(0.05, 1.0), interpolation=mode), v2.RandomHorizontalFlip()]
            ),
            v2.Compose([v2.Resize(44, interpolation=mode), v2.CenterCrop(40)]),
            v2.Compose([v2.Resize((30, 90), interpolation=mode), v2.CenterCrop((40, 48))]),  # pads rows
        ]
        for tf in pipelines:
            geometry, images, plans, want = DeviceGeometry(tf), [], [], []
            for _ in range(24):
                h, w = (int(v) for v in torch.randint(20, 160, (2,)))
                img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
                ops = geometry.plan(h, w)
                images.append(img)
                plans.append(plan_resample(ops, h, w))
                want.append(apply_geometry(img.float(), ops).round().clamp(0, 255).to(torch.uint8))
            got = resample_batch(images, plans, budget=20_000)  # several groups
            diff = (got.int() - torch.stack(want).int()).abs()
            assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, (tf, diff.float().mean())
            assert tf is not pipelines[0] or 0 < sum(p[2].flip for p in plans) < len(plans)  # both ways tested
    nearest = DeviceGeometry(v2.Compose([v2.Resize(44, interpolation=v2.InterpolationMode.NEAREST), v2.CenterCrop(40)]))
    assert plan_resample(nearest.plan(50, 60), 50, 60) is None  # left to the per-image kernels


@pytest.mark.slow
def test_bf16_autocast_on_cpu_trains(tmp_path):
    run_dir = tmp_path / "run"
    out = train([*TINY, "trainer.precision=bf16", "trainer.epochs=2", f"hydra.run.dir={run_dir}"], tmp_path)
    assert "precision bf16" in out.stdout + out.stderr
    h = metrics(run_dir)["history"]
    assert h[-1]["train/loss"] < h[0]["train/loss"] and h[-1]["val/acc"] > 0.5


@pytest.mark.slow
def test_compile_path_runs_on_cpu(tmp_path):
    run_dir = tmp_path / "run"
    # aot_eager: torch.compile's graph capture and autograd without a C++ toolchain (inductor needs one)
    out = train(
        [*TINY, "trainer.compile=aot_eager", "trainer.epochs=1", "finetune.head_epochs=0", f"hydra.run.dir={run_dir}"],
        tmp_path,
        check=False,
    )
    if out.returncode != 0 and "torch._dynamo" in out.stderr and "not supported" in out.stderr:
        pytest.skip("torch.compile is not supported on this platform")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "trainer.compile: compiled the training forward (aot_eager)" in out.stdout + out.stderr
    assert metrics(run_dir)["finished"]


@pytest.mark.slow
def test_benchmark_script_runs_in_quick_mode_and_prints_its_table(tmp_path):
    import json

    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--quick",
            "--modes=png,synthetic,jpeg,frozen",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=offline_env(tmp_path),
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in (
        "| trainer, synthetic |",
        "| bare loop, synthetic |",
        "| trainer, frozen backbone |",
        "| trainer, JPEG files |",
        "ratio trainer / bare (synthetic):",
        "ratio JPEG / synthetic:",
        "ratio frozen / full (time per image):",
        "train --help:",
        "ratio first step: train / bare script:",
        "| data only (an epoch of batches) |",  # the folder of small PNGs, against a bare ImageFolder loop
        "| training epoch |",
        "ratio epoch (train + eval + save) trainer / bare:",
    ):
        assert line in proc.stdout, proc.stdout
    result = json.loads(out.read_text())
    assert {r["variant"] for r in result["rows"]} == {
        "trainer, synthetic",
        "bare loop, synthetic",
        "trainer, frozen backbone",
        "trainer, JPEG files",
    }
    # rates are printed, not judged (a busy machine makes any number): each row carries its measured fields
    assert all({"img_s", "step_ms"} <= set(r) for r in result["rows"]), result["rows"]


def test_resampling_benchmark_runs_and_prints_its_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_resample.py"), "--batch", "6", "--rounds", "1", "--size", "64"],
        capture_output=True,
        text=True,
        env=offline_env(tmp_path),
        timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith(("train ", "eval "))}
    # timings are printed, not judged (a busy machine makes any ratio); the pixels must agree
    assert set(rows) == {"train", "eval"} and all(int(r[4]) <= 8 for r in rows.values()), proc.stdout
    assert all(float(r[1]) >= 0 and float(r[2]) >= 0 for r in rows.values()), proc.stdout


@pytest.mark.slow
def test_decode_on_the_device_is_refused_where_it_cannot_work(tmp_path):
    bad_value = train(
        ["data=imagefolder", f"data.root={tmp_path}", "data.decode=gpu", *TINY[:3]], tmp_path, check=False
    )
    said = bad_value.stdout + bad_value.stderr
    assert bad_value.returncode == 2 and "data.decode" in said and "workers, device" in said and "Traceback" not in said
    generated = train([*TINY, "data.decode=device"], tmp_path, check=False)
    said = generated.stdout + generated.stderr
    assert generated.returncode == 2 and "data.decode=device decodes JPEG files" in said and "Traceback" not in said


@pytest.mark.slow
def test_a_run_with_jpegs_decoded_on_the_device_trains_and_evaluates(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(48):
        folder = tmp_path / "data" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        img = np.full((40, 48, 3), (200, 40, 40) if i % 2 else (40, 40, 200), np.uint8)
        img = (img + rng.integers(0, 40, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
    run_dir = tmp_path / "run"
    out = train(
        [
            "data=imagefolder",
            f"data.root={tmp_path / 'data'}",
            "data.decode=device",
            "data.num_workers=2",
            "data.image_size=32",
            "data.batch_size=16",
            "trainer.epochs=2",
            *TINY[:3],
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert "data.decode=device" in out.stdout + out.stderr and "built by" not in out.stdout + out.stderr
    m = metrics(run_dir)
    assert m["finished"] and m["history"][-1]["val/acc"] > 0.5


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("flags\t\t: fpu sse avx avx2 fma", "fp32"),  # AVX2 only: bf16 would be emulated, slower than fp32
        ("flags\t\t: fpu avx2 avx512f avx512_bf16", "bf16"),
        ("flags\t\t: fpu avx512f amx_bf16 amx_tile", "bf16"),
        ("Features\t: fp asimd bf16 i8mm", "bf16"),  # ARMv8.6
    ],
)
def test_precision_auto_picks_bf16_only_on_cpus_with_native_bf16(tmp_path, monkeypatch, caplog, flags, expected):
    from trainer.loop import devices

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\n{flags}\n\nprocessor\t: 1\n{flags}\n")
    real = devices.cpu_bf16_instructions
    monkeypatch.setattr(devices, "cpu_bf16_instructions", lambda: real(info))
    with caplog.at_level("DEBUG", logger="trainer"):
        assert devices.resolve_precision("auto", torch.device("cpu")) == expected
    assert ("native bf16 instructions" in caplog.text) == (expected == "bf16")
    assert devices.resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit choice always wins
    assert real(tmp_path / "missing") == []  # no cpuinfo (not Linux): fp32


def test_a_cpu_run_trains_in_the_variant_measured_before_and_a_resume_keeps_its_own(tmp_path, monkeypatch):
    """precision/channels_last=auto on a CPU: an answer remembered for this model and machine (imposed
    here) is what the run trains in; the checkpoint's config records it, so a resume keeps it even when
    the remembered answer has changed since."""
    import json

    import yaml

    from trainer.loop import variant as variants
    from trainer.runs.checkpoint import load_checkpoint

    monkeypatch.setattr(variants, "cache_key", lambda *_: "this model here")
    monkeypatch.setattr(variants, "cpu_bf16_instructions", lambda: ["avx512_bf16"])
    cache = tmp_path / "trainer-cache" / "variants.json"  # $TRAINER_CACHE of the runs (support.offline_env)
    cache.parent.mkdir()
    remember = {"variant": "bf16 NCHW", "seconds": {"bf16 NCHW": 0.1, "fp32 channels_last": 0.2}}
    cache.write_text(json.dumps({"this model here": remember}))
    run = tmp_path / "run"
    out = train([*TINY, "trainer.epochs=1", f"hydra.run.dir={run}"], tmp_path)
    assert "on this CPU: bf16 NCHW" in out.stdout + out.stderr
    stored = yaml.safe_load(load_checkpoint(run / "checkpoints" / "last.pt")["config"])["trainer"]
    assert (stored["precision"], stored["channels_last"]) == ("bf16", False)

    cache.write_text(json.dumps({"this model here": {"variant": "fp32 channels_last"}}))
    out = train([f"resume={run}", "trainer.epochs=2"], tmp_path)
    assert (
        "bf16 NCHW (trainer.precision, trainer.channels_last = auto): the variant the resumed"
        in out.stdout + out.stderr
    )
    stored = yaml.safe_load(load_checkpoint(run / "checkpoints" / "last.pt")["config"])["trainer"]
    assert (stored["precision"], stored["channels_last"]) == ("bf16", False) and metrics(run)["epochs_done"] == 2

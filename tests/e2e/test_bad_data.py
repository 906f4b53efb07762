"""Images in every mode become RGB; broken files are skipped by name, counted, and bounded."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from runner import train
from support import metrics

from trainer.data.images import BadImage, decode_rgb


def _bomb_png(path: Path, side: int = 40000) -> None:
    """A tiny PNG whose header claims side x side pixels: Pillow must refuse it before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def _valid_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8))
    out = {}
    rgb.convert("CMYK").save(out.setdefault("cmyk", folder / "cmyk.jpg"))
    Image.fromarray((np.arange(24 * 30).reshape(24, 30) * 90).astype(np.uint16)).save(
        out.setdefault("16bit", folder / "sixteen.png")
    )
    rgb.convert("RGBA").save(out.setdefault("rgba", folder / "rgba.png"))
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    pal.save(out.setdefault("palette", folder / "palette.png"), transparency=0)
    rgb.convert("L").save(out.setdefault("gray", folder / "gray.png"))
    return out


def _broken_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(buf, format="JPEG")
    out = {
        "truncated": folder / "truncated.jpg",
        "empty": folder / "empty.jpg",
        "text": folder / "notes.jpg",
        "bomb": folder / "bomb.png",
    }
    out["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header intact, data cut
    out["empty"].write_bytes(b"")
    out["text"].write_text("this is not an image\n")
    _bomb_png(out["bomb"])
    return out


def test_every_valid_mode_becomes_rgb(tmp_path):
    for mode, path in _valid_images(tmp_path).items():
        img = decode_rgb(str(path))
        assert img.dtype == torch.uint8 and img.shape == (3, 24, 30), mode
    sixteen = decode_rgb(str(tmp_path / "sixteen.png"))
    assert 200 < int(sixteen.max()) <= 255 and int(sixteen.min()) == 0  # scaled from 16 bits, not clipped


def test_every_broken_kind_is_a_bad_image(tmp_path):
    for kind, path in _broken_images(tmp_path).items():
        with pytest.raises(BadImage) as e:
            decode_rgb(str(path))
        assert str(path) in str(e.value), kind
    with pytest.raises(BadImage, match="too large"):
        decode_rgb(str(tmp_path / "bomb.png"))


def _dataset(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    for name, colour in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        (root / name).mkdir(parents=True)
        for i in range(40):
            arr = np.clip(rng.normal(colour, 30, (28, 28, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    _valid_images(root / "a" / "modes")
    return _broken_images(root / "b" / "broken")


ARGS = [
    "data=imagefolder",
    "data.image_size=24",
    "data.batch_size=8",
    "model.name=test_resnet",
    "model.pretrained=false",
    "model.weights=null",
    "trainer.epochs=2",
    "finetune.head_epochs=0",
]


@pytest.mark.slow
def test_broken_images_are_skipped_by_name_and_bounded(tmp_path):
    broken = _dataset(tmp_path / "data")
    stopped = train([*ARGS, f"data.root={tmp_path / 'data'}"], tmp_path, check=False)
    out = stopped.stdout + stopped.stderr
    assert stopped.returncode == 2 and "cannot be read, more than data.max_bad_fraction=0.01" in out
    assert "Traceback" not in out

    run_dir = tmp_path / "run"
    done = train(
        [*ARGS, f"data.root={tmp_path / 'data'}", "data.max_bad_fraction=0.1", f"hydra.run.dir={run_dir}"], tmp_path
    )
    log = (run_dir / "train.log").read_text()
    for path in broken.values():
        assert log.count(f"skipping an image that cannot be read: {path}") == 1, path
    assert metrics(run_dir)["finished"] and metrics(run_dir)["best"] >= 0.8
    assert "modes" not in log.split("skipping")[-1]  # valid odd modes are not skipped
    del done


@pytest.mark.slow
def test_verify_lists_every_problem_before_training(tmp_path):
    broken = _dataset(tmp_path / "data")
    proc = train([*ARGS, f"data.root={tmp_path / 'data'}", "data.verify=true"], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    for path in broken.values():
        assert f"data.verify: {path}" in out
    assert "4 cannot be read" in out and "epoch 1/" not in out

"""Decoding a file as a viewer shows it: EXIF orientation on every path, malformed EXIF, 16-bit
images rounded like a float computation, and a file's header checked before its body is read."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import trainer.data.images as images
from trainer.data.images import FileImages, decode_rgb, orient


def _tagged(path, orientation, arr, **save):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif.tobytes(), **save)


@pytest.mark.parametrize("ext", ["jpg", "png", "jfif"])
def test_every_orientation_is_applied_as_pillow_applies_it(tmp_path, ext):
    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    arr[:6, :9] = 0  # no symmetry left
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.{ext}"
        _tagged(path, orientation, arr, **({"format": "JPEG", "quality": 100} if ext != "png" else {}))
        with Image.open(path) as ref:
            upright = np.asarray(ImageOps.exif_transpose(ref).convert("RGB"))
        got = decode_rgb(str(path))
        assert torch.equal(got, torch.from_numpy(upright.copy()).permute(2, 0, 1)), orientation
        assert decode_rgb(str(path), exif=False).shape == (3, 20, 30)  # data.exif=ignore: as stored
        assert torch.equal(orient(decode_rgb(str(path), exif=False), orientation), got)


def test_a_jpeg_to_turn_is_not_handed_to_the_device_decoder(tmp_path):
    arr = np.zeros((8, 16, 3), np.uint8)
    _tagged(tmp_path / "turned.jpg", 6, arr)
    _tagged(tmp_path / "upright.jpg", 1, arr)
    files = FileImages([tmp_path / "turned.jpg", tmp_path / "upright.jpg"], [0, 1])
    assert files.jpeg(0) is None and files.jpeg(1)[1:] == (8, 16)
    files.exif = False
    assert files.jpeg(0)[1:] == (8, 16)


def test_malformed_exif_is_used_as_stored_with_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(images, "_warned", set())
    arr = np.full((10, 14, 3), 90, np.uint8)
    broken = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\xff\xff\xff\xff"  # counts past its end
    for i, ext in enumerate(("jpg", "png", "webp")):
        Image.fromarray(arr).save(tmp_path / f"b{i}.{ext}", exif=broken)
    with caplog.at_level(logging.WARNING):
        for i, ext in enumerate(("jpg", "png", "webp")):
            assert decode_rgb(str(tmp_path / f"b{i}.{ext}")).shape == (3, 10, 14)
    warned = [r.getMessage() for r in caplog.records if "EXIF" in r.getMessage()]
    assert len(warned) == 1 and ": its EXIF data is malformed" in warned[0], warned


def test_sixteen_bit_is_rounded_like_a_float_computation(tmp_path):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    Image.fromarray(values).save(tmp_path / "g16.png")
    got = decode_rgb(str(tmp_path / "g16.png"))
    want = np.floor(values.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    assert got.shape == (3, 256, 256) and torch.equal(got[0], torch.from_numpy(want))


PEAK = """
import resource, sys, numpy as np
from trainer.data.images import decode_rgb, BadImage
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_rgb(sys.argv[1])
except BadImage:
    pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def _peak_mib(path) -> int:
    out = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.slow  # two interpreters with torch: seconds each on a 2-core CPU
def test_a_sixteen_bit_image_costs_what_its_eight_bit_twin_costs(tmp_path):
    side = 3000
    ramp = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16).reshape(side, side)
    Image.fromarray(ramp).save(tmp_path / "deep.png", compress_level=1)
    Image.fromarray((ramp >> 8).astype(np.uint8)).save(tmp_path / "twin.png", compress_level=1)
    deep, twin = _peak_mib(tmp_path / "deep.png"), _peak_mib(tmp_path / "twin.png")
    assert deep <= twin + side * side * 2 / 2**20 + 8, (deep, twin)  # at most its own 16-bit pixels more


@pytest.mark.slow  # two interpreters with torch: seconds each on a 2-core CPU
def test_a_huge_file_is_judged_by_its_header_not_read_whole(tmp_path):
    video = tmp_path / "holiday.jpg"  # a 1 GiB video named .jpg (sparse: no disk used)
    with open(video, "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom")
        f.truncate(2**30)
    motion = tmp_path / "motion.jpg"  # a real JPEG with 1 GiB after its end (a motion photo gone wrong)
    Image.fromarray(np.full((64, 64, 3), 77, np.uint8)).save(motion)
    with open(motion, "ab") as f:
        f.truncate(2**30)
    assert _peak_mib(video) < 64 and _peak_mib(motion) < 64
    assert decode_rgb(str(motion)).shape == (3, 64, 64)

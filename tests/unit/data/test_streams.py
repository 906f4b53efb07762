"""Streamed data (data/streams.py): shards read in order through ``webdataset.gopen`` (here ``pipe:cat``),
split over ranks and loader workers so that an epoch reads each sample once, resumed part-way into an
epoch to the very batches of an unbroken one, and Hugging Face IterableDatasets read the same way."""

from __future__ import annotations

import io
import json
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

from trainer.data.sharded import load_hf, load_webdataset
from trainer.data.sources import capabilities, require
from trainer.data.streams import StreamEpoch, StreamImages, StreamLoader
from trainer.errors import UserError

CLASSES = ["red", "green", "blue"]


def _png(i: int) -> bytes:
    a = np.zeros((8, 8, 3), np.uint8)
    a[..., 0], a[..., 1] = i % 256, i // 256  # the image says which sample it is
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG")
    return buffer.getvalue()


def _shards(folder, name, n, per_shard, first=0):
    with webdataset.ShardWriter(str(folder / f"{name}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(first, first + n):
            sink.write({"__key__": f"s{i:05d}", "png": _png(i), "cls": str(i % 3).encode()})


def _stream(folder, shards, **keys):
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    _shards(folder, "val", 6, 6, first=1000)
    pattern = f"pipe:cat {folder}/train-{{000000..{shards - 1:06d}}}.tar"
    return load_webdataset(
        pattern, f"pipe:cat {folder}/val-000000.tar", classes_file=str(folder / "classes.txt"), **keys
    )


def _which(image: torch.Tensor) -> int:
    return int(image[0, 0, 0]) + 256 * int(image[1, 0, 0])


def _epoch(images, rank=0, world=2, workers=2, batch=6, transform=lambda img: img):
    return StreamEpoch(images, transform, list, seed=3, batch_size=batch, workers=workers, rank=rank, world_size=world)


def _read(epoch, workers, number=0, start=0):
    """The batches a loader with ``workers`` workers gives for epoch ``number``: lists of (image, target)."""
    epoch.set_epoch(number, start * epoch.batch_size)
    return list(StreamLoader(epoch, num_workers=workers))


def test_each_sample_is_read_once_an_epoch_over_ranks_and_workers(tmp_path):
    _shards(tmp_path, "train", 96, 12)  # 8 shards: 2 ranks x 2 workers x 2 shards, 24 samples = 4 batches each
    splits = _stream(tmp_path, 8)
    assert isinstance(splits.train, StreamImages) and len(splits.train) == 96
    assert splits.classes == CLASSES and len(splits.val) == 6  # val read once into memory, indexed
    orders = []
    for number in (0, 1):
        seen = []
        for rank in (0, 1):
            batches = _read(_epoch(splits.train, rank=rank), 2, number)
            assert len(batches) == 8 and all(len(b) == 6 for b in batches)  # the same count on both ranks
            seen += [_which(x) for b in batches for x, _ in b]
            assert all(y == _which(x) % 3 for b in batches for x, y in b)  # labels travel with their images
        assert Counter(seen) == Counter(range(96)), "each sample exactly once in the epoch"
        orders.append(seen)
    assert orders[0] != orders[1]  # shuffled anew each epoch (shards and buffer, seeded by the epoch)
    again = [_which(x) for rank in (0, 1) for b in _read(_epoch(splits.train, rank=rank), 2, 1) for x, _ in b]
    assert again == orders[1]  # and the same again for the same seed and epoch


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_an_epoch_resumed_part_way_gives_the_very_batches_of_an_unbroken_one(tmp_path, workers):
    _shards(tmp_path, "train", 90, 10)  # 9 shards of 10; one rank; a worker per shard at most
    splits = _stream(tmp_path, 9)

    def noisy(img):  # an augmentation drawing from torch's generator: seeded per sample
        return img.float() + torch.rand(1)

    epoch = _epoch(splits.train, world=1, workers=max(1, workers), batch=4, transform=noisy)
    unbroken = _read(epoch, workers, number=2)
    assert len(unbroken) == len(epoch) == 22
    for start in (1, 5, 21):
        resumed = _read(epoch, workers, number=2, start=start)
        assert len(resumed) == len(unbroken) - start
        for a, b in zip(unbroken[start:], resumed):
            assert all(torch.equal(x1, x2) and y1 == y2 for (x1, y1), (x2, y2) in zip(a, b))


def test_shards_that_do_not_divide_evenly_repeat_or_leave_out_what_the_docstring_says(tmp_path):
    _shards(tmp_path, "train", 60, 12)  # 5 shards over 2 ranks: 3 and 2 shards, each rank 30 samples an epoch
    splits = _stream(tmp_path, 5)
    per_rank = []
    for rank in (0, 1):
        batches = _read(_epoch(splits.train, rank=rank, workers=1, batch=5), 0)
        assert len(batches) == 6  # both ranks train 60 // 2 // 5 batches: DDP's steps stay in step
        per_rank.append(Counter(_which(x) for b in batches for x, _ in b))
    big, small = sorted(per_rank, key=len, reverse=True)
    assert len(big) == 30 and max(big.values()) == 1  # 36 samples in 3 shards: 30 read, 6 left for later
    assert len(small) == 24 and sum(small.values()) == 30  # 24 in 2 shards: all read, 6 of them twice
    assert not set(big) & set(small)


def test_the_epoch_length_is_known_from_sizes_json_or_given_else_estimated(tmp_path, caplog):
    _shards(tmp_path, "train", 50, 12)  # 12, 12, 12, 12, 2
    splits = _stream(tmp_path, 5)
    assert len(splits.train) == 60 and not capabilities(splits.train).exact_length  # 12 in the first x 5 shards
    assert "estimated as 12 in the first shard x 5 shards" in caplog.text
    assert len(_stream(tmp_path, 5, train_samples=50).train) == 50
    sizes = {f"train-{i:06d}.tar": 2 if i == 4 else 12 for i in range(5)}
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    local = load_webdataset(f"{tmp_path}/train-*.tar", f"{tmp_path}/val-*.tar", streaming=True)
    assert len(local.train) == 50 and capabilities(local.train).exact_length


def test_a_streamed_source_declares_what_it_cannot_do_and_is_refused_in_one_paragraph(tmp_path):
    _shards(tmp_path, "train", 24, 12)
    splits = _stream(tmp_path, 2)
    caps = capabilities(splits.train)
    assert not (caps.folds or caps.balanced or caps.duplicates or caps.verify or caps.cached_features)
    assert capabilities(splits.val).folds  # the val split, held in memory, is indexed
    with pytest.raises(UserError, match=r"data.folds=5: K-fold .* streamed \(pipe:cat .*write-shards"):
        require(splits.train, "folds", "data.folds=5")
    with pytest.raises(UserError, match="give its val split as data.val"):
        load_webdataset(f"pipe:cat {tmp_path}/train-000000.tar")


def test_a_hugging_face_iterable_dataset_streams_a_shard_per_file(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})

    def part(ids):
        images = [Image.open(io.BytesIO(_png(i))) for i in ids]
        return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in ids]}, features=features)

    (tmp_path / "data").mkdir()
    for k in range(4):
        part(range(k * 10, k * 10 + 10)).to_parquet(str(tmp_path / "data" / f"train-{k:05d}-of-00004.parquet"))
    part(range(500, 506)).to_parquet(str(tmp_path / "data" / "validation-00000-of-00001.parquet"))
    splits = load_hf(str(tmp_path / "data"), streaming=True)
    assert splits.classes == CLASSES and len(splits.train.shards) == 4 and len(splits.val) == 6
    seen = []
    for rank in (0, 1):
        batches = _read(_epoch(splits.train, rank=rank, workers=2, batch=5), 2)
        assert len(batches) == 4
        seen += [_which(x) for b in batches for x, _ in b]
        assert all(y == _which(x) % 3 for b in batches for x, y in b)
    assert Counter(seen) == Counter(range(40))


def test_shards_over_http_are_streamed_with_the_class_names_and_sizes_beside_them(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    _shards(tmp_path, "train", 48, 12)
    _shards(tmp_path, "val", 6, 6, first=1000)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp_path / "sizes.json").write_text(json.dumps({f"train-{i:06d}.tar": 12 for i in range(4)}))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        splits = load_webdataset(f"{url}/train-{{000000..000003}}.tar", f"{url}/val-000000.tar")
        assert splits.classes == CLASSES and len(splits.val) == 6  # classes.txt read beside the shards
        assert len(splits.train) == 48 and capabilities(splits.train).exact_length  # sizes.json too
        seen = [_which(x) for rank in (0, 1) for b in _read(_epoch(splits.train, rank=rank), 2) for x, _ in b]
        assert Counter(seen) == Counter(range(48))
    finally:
        server.shutdown()


def test_a_shard_that_breaks_in_a_worker_stops_the_epoch_with_its_own_paragraph(tmp_path):
    _shards(tmp_path, "train", 36, 12)
    (tmp_path / "train-000001.tar").write_bytes(b"not a tar at all" * 40)
    splits = _stream(tmp_path, 3)
    with pytest.raises(UserError) as e:
        _read(_epoch(splits.train, world=1, workers=2, batch=4), 2)
    assert str(e.value).startswith(f"pipe:cat {tmp_path}/train-000001.tar: the stream is not a readable tar shard")
    assert "Traceback" not in str(e.value) and "worker" not in str(e.value)

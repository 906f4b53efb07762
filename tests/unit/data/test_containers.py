"""Images inside containers, read by index: WebDataset shards (indexed from their tar headers, labels from
.cls or .json members, class names from classes.txt) and Hugging Face data sets (save_to_disk, Parquet),
each holding the same bytes as the files they were made from."""

from __future__ import annotations

import io
import json
import tarfile

import datasets
import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

from trainer.data.duplicates import find_duplicates
from trainer.data.fingerprint import fingerprint
from trainer.data.folds import FoldImages
from trainer.data.images import native_size
from trainer.data.sharded import load_hf, load_webdataset
from trainer.errors import UserError

CLASSES = ["red", "green", "blue"]


def _png(c: int, i: int, size: int = 24) -> bytes:
    a = np.full((size, size, 3), 10, np.uint8)
    a[..., c] = 150 + i % 100  # every image its own (the duplicate check would drop equal ones)
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG")
    return buffer.getvalue()


def _shards(folder, name, n, label=lambda c: str(c).encode(), key="cls", per_shard=7):
    with webdataset.ShardWriter(str(folder / f"{name}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(n):
            sink.write({"__key__": f"{name}{i:05d}", "png": _png(i % 3, i), key: label(i % 3)})


def test_shards_are_indexed_by_their_headers_and_read_by_index(tmp_path):
    _shards(tmp_path, "train", 30)
    _shards(tmp_path, "val", 9)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    splits = load_webdataset(f"{tmp_path}/train-{{000000..000004}}.tar", f"{tmp_path}/val-*.tar")
    assert splits.classes == CLASSES and len(splits.train) == 30 and len(splits.val) == 9
    assert splits.train.targets == [i % 3 for i in range(30)]
    for i in (0, 13, 29):  # the bytes a shard holds for a sample are the bytes written
        assert splits.train.fetch(i) == _png(i % 3, i)
        image = splits.train.load(i)
        assert image.dtype == torch.uint8 and image.shape == (3, 24, 24) and int(image[i % 3, 0, 0]) == 150 + i % 100
    with tarfile.open(tmp_path / "train-000001.tar") as tar:  # what the tar itself says of the 8th sample
        member = next(m for m in tar if m.name == "train00007.png")
        assert splits.train.members[7][1:] == (member.offset_data, member.size)
    assert native_size(splits.train) == 24
    assert fingerprint(splits)["train"]["images"] == 30
    fold = FoldImages(splits.train, [3, 4])
    assert fold.names == [splits.train.names[3], splits.train.names[4]] and fold.fetch(1) == _png(1, 4)


def test_labels_from_a_json_field_or_names_and_a_split_when_there_is_no_val(tmp_path):
    _shards(tmp_path, "train", 30, label=lambda c: json.dumps({"label": CLASSES[c]}).encode(), key="json")
    splits = load_webdataset(f"{tmp_path}/train-*.tar", label_key="json", label_field="label", val_split=0.2)
    assert splits.classes == sorted(CLASSES) and len(splits.train) + len(splits.val) == 30
    assert {splits.classes[t] for t in splits.val.targets} == set(CLASSES)  # stratified
    assert not set(splits.train.names) & set(splits.val.names)
    with pytest.raises(UserError, match="no field 'class'"):
        load_webdataset(f"{tmp_path}/train-*.tar", label_key="json", label_field="class")


def test_a_copy_inside_the_shards_is_found_by_its_bytes(tmp_path):
    with webdataset.ShardWriter(str(tmp_path / "train-%06d.tar"), maxcount=50, verbose=0) as sink:
        for i in range(12):
            sink.write({"__key__": f"t{i}", "png": _png(i % 3, i), "cls": str(i % 3).encode()})
    with webdataset.ShardWriter(str(tmp_path / "val-%06d.tar"), maxcount=50, verbose=0) as sink:
        for i in range(6):
            sink.write({"__key__": f"v{i}", "png": _png(i % 3, 7 if i == 1 else 50 + i), "cls": str(i % 3).encode()})
    splits = load_webdataset(f"{tmp_path}/train-*.tar", f"{tmp_path}/val-*.tar")
    found = find_duplicates(splits)
    assert found.val_copies_of_train() == [1]  # val sample v1 holds train sample t7's bytes
    assert sorted(found.across()[0]) == [("train", 7), ("val", 1)]


@pytest.mark.parametrize(
    "pattern, words",
    [
        ("pipe:curl -s http://x/{0..3}.tar", "is streamed: give its val split as data.val"),
        ("https://host/train-{000000..000003}.tar", "is streamed: give its val split as data.val"),
        ("/nowhere/train-{000000..000003}.tar", r"4 shard\(s\) missing"),
    ],
)
def test_shards_that_cannot_be_read_are_refused_in_one_paragraph(pattern, words):
    with pytest.raises(UserError, match=words):
        load_webdataset(pattern)


def _hf(n):
    images = [Image.open(io.BytesIO(_png(i % 3, i))) for i in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]}, features=features)


def test_a_saved_hugging_face_data_set_gives_its_class_names_and_splits(tmp_path):
    datasets.DatasetDict({"train": _hf(30), "validation": _hf(9)}).save_to_disk(str(tmp_path / "saved"))
    splits = load_hf(str(tmp_path / "saved"))
    assert splits.classes == CLASSES and len(splits.train) == 30 and len(splits.val) == 9
    assert splits.train.targets == [i % 3 for i in range(30)]
    assert torch.equal(
        splits.train.load(5), torch.from_numpy(np.asarray(Image.open(io.BytesIO(_png(2, 5))))).permute(2, 0, 1)
    )
    with pytest.raises(UserError, match="no column 'img'"):
        load_hf(str(tmp_path / "saved"), image_column="img")


def test_parquet_files_without_a_val_split_are_split_stratified(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    _hf(30).to_parquet(str(folder / "train-00000.parquet"))
    splits = load_hf(str(folder), val_split=0.2)
    assert splits.classes == CLASSES and len(splits.train) == 24 and len(splits.val) == 6
    assert sorted(splits.val.targets) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(UserError, match="neither a data set saved with save_to_disk"):
        (tmp_path / "empty").mkdir()
        load_hf(str(tmp_path / "empty"))

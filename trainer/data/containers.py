"""Data that outgrows a folder, read by index: WebDataset shards on a local disk (``data=webdataset``) and
Hugging Face data sets saved as Arrow or Parquet (``data=hf``).

Both are indexed sources: each image is found by its number, so everything a folder gets works
unchanged (seeded shuffling and exact resume mid-epoch, each image once an epoch under torchrun,
K-fold, balanced sampling, the duplicate check, per-image error reports). A shard is indexed once
when the run is built: its tar headers are read (not its images), giving each sample's key, its image
member's place in the file and its label (a ``.cls`` member, or a field of a ``.json`` one). Shards
behind a URL (``pipe:``, ``http://``, ``s3://``) and ``data.streaming=true`` are streamed instead
(``data/streams.py``).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.data.images import EncodedImages
from trainer.errors import UserError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MAX_LABEL_BYTES = 1 << 16  # a .cls or .json member is a label, not data: bounded


class ShardImages(EncodedImages):
    """Images inside tar shards: (shard, offset, size) per image, read with one seek."""

    def __init__(self, members: list[tuple[str, int, int]], names: list[str], targets: Sequence[Any]) -> None:
        self.members, self.names, self.targets = members, names, list(targets)
        self._open: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # a loader worker opens its own files
        return {**self.__dict__, "_open": {}}

    def fetch(self, index: int) -> bytes:
        shard, offset, size = self.members[index]
        f = self._open.get(shard)
        if f is None:
            f = self._open[shard] = open(shard, "rb")  # noqa: SIM115 - kept open for the next reads
        f.seek(offset)
        return f.read(size)

    def byte_size(self, index: int) -> int:
        return self.members[index][2]


def is_url(pattern: str) -> bool:
    """Shards behind a URL or a pipe (read as a stream), rather than files on a local or mounted disk."""
    return "://" in pattern or pattern.startswith("pipe:")


def expand_shards(pattern: str, key: str) -> list[str]:
    """The shard files a pattern names: brace ranges (``train-{000000..000099}.tar``), a glob, or a list
    separated by ``::``; local paths only."""
    import glob

    import braceexpand

    if is_url(pattern):
        raise UserError(
            f"{key}={pattern!r}: shards behind a URL or a pipe are streamed; they cannot be read by index here. "
            "Give a local or mounted folder's path (brace ranges work: shards/train-{000000..000009}.tar)."
        )
    found: list[str] = []
    for part in pattern.split("::"):
        for name in braceexpand.braceexpand(os.path.expanduser(part)):
            found.extend(sorted(glob.glob(name)) if any(c in name for c in "*?[") else [name])
    missing = [f for f in found if not os.path.isfile(f)]
    if not found or missing:
        raise UserError(
            f"{key}={pattern!r}: {'no file matches it' if not found else f'{len(missing)} shard(s) missing, e.g. {missing[0]}'}; "
            "give the shards' path, with a brace range for many (shards/train-{000000..000009}.tar)."
        )
    return found


def index_shard(path: str, label_key: str, field: str | None) -> list[tuple[str, int, int, Any]]:
    """(key, offset, size, label) of each sample of a tar shard with an image and a label; headers read
    and label members (bounded), images not."""
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile() or "." not in os.path.basename(m.name):
                    continue
                base = os.path.basename(m.name)
                key = os.path.join(os.path.dirname(m.name), base.split(".", 1)[0])
                ext = base.split(".", 1)[1].lower()
                entry = samples.setdefault(key, {})
                if ext in IMAGE_KEYS and "image" not in entry:
                    entry["image"] = (m.offset_data, m.size)
                elif ext == label_key and m.size <= MAX_LABEL_BYTES:
                    entry["label"] = tar.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{path}: not a readable tar shard ({e}); write shards with `write-shards`.") from None
    out = []
    for key, entry in samples.items():
        if "image" in entry and "label" in entry:
            out.append((key, *entry["image"], parse_label(entry["label"], field, f"{path}:{key}.{label_key}")))
    return out


def parse_label(raw: bytes, field: str | None, where: str) -> Any:
    text = raw.decode("utf-8", "replace").strip()
    if field is None:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        raise UserError(f"{where}: not JSON; give data.label_key=cls for a plain label file") from None
    if not isinstance(value, dict) or field not in value:
        raise UserError(f"{where}: no field {field!r}; set data.label_field to the field that holds the label")
    return value[field]


def classes_beside(shards: list[str], given: str | None) -> list[str] | None:
    """Class names from a file: ``data.classes_file``, else classes.txt beside the shards (one per line)."""
    path = Path(given).expanduser() if given else Path(shards[0]).parent / "classes.txt"
    if not path.is_file():
        if given:
            raise UserError(f"data.classes_file={given!r}: no such file; give a text file with one class name a line.")
        return None
    if path.stat().st_size > 1 << 22:
        raise UserError(f"{path}: {path.stat().st_size} bytes is too large for a list of class names")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def label_indices(labels: list[Any], classes: list[str] | None, where: str) -> tuple[list[int], list[str]]:
    """Class indices of labels given as indices (named by ``classes``, else "0".."K-1") or as names."""
    if all(str(v).strip().lstrip("-").isdigit() for v in labels):
        idx = [int(str(v).strip()) for v in labels]
        classes = classes or [str(i) for i in range(max(idx, default=-1) + 1)]
    else:
        classes = classes or sorted({str(v) for v in labels})
        lookup = {name: i for i, name in enumerate(classes)}
        idx = [lookup.get(str(v), -1) for v in labels]
    for v, i in zip(labels, idx):
        if not 0 <= i < len(classes):
            raise UserError(
                f"{where}: label {v!r} is not one of the {len(classes)} classes ({', '.join(classes[:6])}"
                f"{', ...' if len(classes) > 6 else ''}); fix the label or the class names file."
            )
    return idx, classes


def shard_images(pattern: str, key: str, label_key: str, field: str | None) -> tuple[ShardImages, list[Any]]:
    shards = expand_shards(pattern, key)
    members, names, labels = [], [], []
    for shard in shards:
        absolute = os.path.abspath(shard)
        for sample, offset, size, label in index_shard(absolute, label_key, field):
            members.append((absolute, offset, size))
            names.append(f"{absolute}#{sample}")
            labels.append(label)
    if not members:
        raise UserError(
            f"{key}={pattern!r}: no sample with an image ({', '.join(IMAGE_KEYS)}) and a .{label_key} label in "
            f"{len(shards)} shard(s); write shards with `write-shards`, or set data.image_key/data.label_key."
        )
    return ShardImages(members, names, [0] * len(members)), labels


class ArrowImages(EncodedImages):
    """Images in a column of a Hugging Face data set (Arrow, memory-mapped): an ``Image`` feature's bytes
    (or the file it names), or plain bytes."""

    def __init__(self, table: Any, column: str, rows: list[int], names: list[str], targets: Sequence[Any]) -> None:
        self.table, self.column, self.rows = table, column, list(rows)
        self.names, self.targets = names, list(targets)

    def fetch(self, index: int) -> bytes:
        return cell_bytes(self.table[self.rows[index]][self.column], self.names[index], self.column)


def cell_bytes(cell: Any, name: str, column: str) -> bytes:
    """The encoded image a data set's cell holds: an ``Image`` feature's bytes (or the file it names), or
    plain bytes."""
    if isinstance(cell, dict):
        if cell.get("bytes") is not None:
            return cell["bytes"]
        cell = cell.get("path")
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, str) and os.path.isfile(cell):
        return Path(cell).read_bytes()
    raise ValueError(f"{name}: no image in column {column!r} ({type(cell).__name__})")


def open_hf(path: str, streaming: bool = False) -> Any:
    """A data set saved with ``save_to_disk``, local Parquet or Arrow files (a file, or a folder whose file
    names say the split: train-*.parquet, validation-*.parquet), or a name on the Hugging Face hub;
    ``streaming``: as ``IterableDataset``s (a saved one, a shard per Arrow file)."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    local = Path(path).expanduser()
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            saved = datasets.load_from_disk(str(local))
            if streaming:
                parts = {"train": saved} if isinstance(saved, datasets.Dataset) else dict(saved)
                return datasets.IterableDatasetDict(
                    {k: v.to_iterable_dataset(num_shards=len(v.cache_files) or 1) for k, v in parts.items()}
                )
            return saved
        files = [local] if local.is_file() else sorted(local.rglob("*")) if local.is_dir() else []
        kinds = {f.suffix for f in files if f.suffix in (".parquet", ".arrow")}
        if len(kinds) == 1:
            kind = kinds.pop().lstrip(".")
            return datasets.load_dataset(
                kind,
                data_files=str(local) if local.is_file() else None,
                data_dir=None if local.is_file() else str(local),
                streaming=streaming,
            )
        if local.exists():
            raise UserError(
                f"data.path={path!r}: neither a data set saved with save_to_disk nor a folder of .parquet or .arrow "
                "files (one kind); give one of those, or a Hugging Face hub name."
            )
        return datasets.load_dataset(path, streaming=streaming)
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"data.path={path!r}: could not be opened as a Hugging Face data set ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); give a folder saved with save_to_disk, local "
            ".parquet/.arrow files, or a hub name (the hub needs the network)."
        ) from None


def split_of(data: Any, name: str, path: str, key: str) -> Any:
    import datasets

    if isinstance(data, datasets.Dataset):
        return data if name == "train" else None
    if name in data:
        return data[name]
    if key == "data.train_split":
        raise UserError(f"data.path={path!r} has no split {name!r} (it has {', '.join(data)}); set {key}.")
    return None


def hf_images(
    split: Any, where: str, image_column: str, label_column: str
) -> tuple[ArrowImages, list[Any], list[str] | None]:
    import datasets

    for column in (image_column, label_column):
        if column not in split.column_names:
            key = "data.image_column" if column == image_column else "data.label_column"
            raise UserError(f"{where}: no column {column!r} (it has {', '.join(split.column_names)}); set {key}.")
    feature = split.features[label_column]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if isinstance(split.features[image_column], datasets.Image):
        split = split.cast_column(image_column, datasets.Image(decode=False))
    labels = list(split[label_column])
    table = split.select_columns([image_column])
    rows = list(range(len(split)))
    return ArrowImages(table, image_column, rows, [f"{where}[{i}]" for i in rows], [0] * len(rows)), labels, names

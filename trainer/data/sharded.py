"""The data options for data that outgrows a folder, ``data=webdataset`` and ``data=hf``: shards and data
sets on a local disk read by index (``containers.py``), or streamed (``streams.py``) when they are behind a
URL or ``data.streaming=true`` says so."""

from __future__ import annotations

from typing import Any

from trainer.config.targets import buildable
from trainer.data.containers import (
    classes_beside,
    expand_shards,
    hf_images,
    is_url,
    label_indices,
    open_hf,
    shard_images,
    split_of,
)
from trainer.data.datasets import Splits, stratified_split
from trainer.data.folds import FoldImages
from trainer.data.streams import streamed_hf, streamed_webdataset


@buildable
def load_webdataset(
    train: str,
    val: str | None = None,
    classes_file: str | None = None,
    label_key: str = "cls",
    label_field: str | None = None,
    val_split: float = 0.2,
    seed: int = 0,
    streaming: bool = False,
    train_samples: int | None = None,
    shuffle_buffer: int = 1000,
) -> Splits:
    """WebDataset shards: ``train`` (and ``val``) patterns, labels from ``.cls`` members (or a ``.json``
    member's ``label_field``), class names from ``classes_file`` or classes.txt beside the shards. Shards
    behind a URL, or any with ``streaming``, are streamed (``data/streams.py``)."""
    if streaming or is_url(train) or is_url(val or ""):
        splits = streamed_webdataset(train, val, classes_file, (label_key, label_field), train_samples)
        splits.train.buffer = int(shuffle_buffer)
        return splits
    train_set, train_labels = shard_images(train, "data.train", label_key, label_field)
    classes = classes_beside(expand_shards(train, "data.train"), classes_file)
    held = shard_images(val, "data.val", label_key, label_field) if val else None
    where = "data.train / data.val" if val else "data.train"
    return labelled_splits((train_set, train_labels), held, classes, where, (val_split, seed))


@buildable
def load_hf(
    path: str,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    val_name: str = "validation",
    val_split: float = 0.2,
    seed: int = 0,
    streaming: bool = False,
    train_samples: int | None = None,
    shuffle_buffer: int = 1000,
) -> Splits:
    """A Hugging Face data set (``open_hf``): its ``train_split``, and ``val_name`` as val (else a
    stratified ``val_split`` of train); a ``ClassLabel`` column's names are the classes. With
    ``streaming``, an ``IterableDataset`` read in order (``data/streams.py``)."""
    data = open_hf(path, streaming)
    if streaming:
        splits = streamed_hf(data, path, (image_column, label_column), (train_split, val_name), train_samples)
        splits.train.buffer = int(shuffle_buffer)
        return splits
    train = split_of(data, train_split, path, "data.train_split")
    train_set, train_labels, names = hf_images(train, f"{path}:{train_split}", image_column, label_column)
    val = split_of(data, val_name, path, "data.val_name")
    held = hf_images(val, f"{path}:{val_name}", image_column, label_column)[:2] if val is not None else None
    return labelled_splits((train_set, train_labels), held, names, f"data.path={path!r}", (val_split, seed))


def labelled_splits(
    train: tuple[Any, list[Any]], val: tuple[Any, list[Any]] | None, classes: list[str] | None, where: str, split: tuple
) -> Splits:
    """Train and val image sets given their labels as stored: class indices over both (named by ``classes``,
    else by the labels), and without a val set a stratified ``val_split`` of train (``split``: it, seed)."""
    (train_set, train_labels), (val_split, seed) = train, split
    if val is not None:
        val_set, val_labels = val
        targets, classes = label_indices(train_labels + val_labels, classes, where)
        train_set.targets, val_set.targets = targets[: len(train_labels)], targets[len(train_labels) :]
        return Splits(train_set, val_set, classes)
    train_set.targets, classes = label_indices(train_labels, classes, where)
    tr, va = stratified_split(train_set.targets, val_split, seed, classes)
    return Splits(FoldImages(train_set, tr), FoldImages(train_set, va), classes)

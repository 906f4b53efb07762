"""Data read in order, as a stream: WebDataset shards behind a URL (``pipe:``, ``http://``, ``s3://``, any
URL ``webdataset.gopen`` opens; or local shards with ``data.streaming=true``) and Hugging Face data sets
as an ``IterableDataset`` (``data=hf data.streaming=true``).

A streamed training split is never listed: its shards are read once an epoch, in an order that depends
only on (seed, epoch, rank, worker), so a run is reproducible and resumable. It declares what it cannot
do (``data/sources.py``): folds, class balancing, the duplicate check and verification need every image
or label up front and are refused or said to be skipped. Its val split is read once into memory (bounded)
and is indexed from then on, so the val pass, calibration, ``evaluate`` and its per-image reports work as
for a folder.

One epoch, on every rank alike (N: the split's length, known from ``data.train_samples``, a sizes.json
beside the shards (``write-shards`` writes it) or the data set's own info, else estimated from the first
shard and said so; R ranks, K loader workers a rank, batch B):

* the shards are shuffled with (seed, epoch); rank r takes every R-th from r, its worker w every K-th of
  those from w;
* a rank trains ``N // R // B`` batches (what is left over is not read that epoch, as ``drop_last``);
  worker w makes every K-th of them from w, reading its shards in turn through a shuffle buffer
  (``data.shuffle_buffer`` samples, seeded), and its quota of B-image batches ends its epoch. A worker
  whose shards hold fewer samples than its quota reads them again (shuffled anew); one whose shards hold
  more leaves the rest unread that epoch. So each sample is read exactly once an epoch when every worker's
  shards hold exactly its quota (equal shards, a shard count that divides by R x K, and N // R a multiple
  of K x B); otherwise some samples of that epoch are read twice and as many are not read, never more
  than the differences between the workers' shards and their quotas;
* the batches are taken from the workers in turn (0, 1, ..., K-1, 0, ...), as torch's DataLoader does.

A run stopped part-way into an epoch resumes it exactly: each worker reads again, without decoding, the
samples of its batches trained before the stop, and the workers are taken in turn from the one whose
batch came next, so the resumed epoch gives the very batches (and per-sample augmentation) of an
unbroken one. The cost is reading those samples again. Resuming with another number of ranks or
workers reads the epoch in another order.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainer.config.tasks import task_named
from trainer.data.containers import (
    IMAGE_KEYS,
    MAX_LABEL_BYTES,
    cell_bytes,
    expand_shards,
    is_url,
    label_indices,
    parse_label,
    shard_images,
)
from trainer.data.datasets import Splits
from trainer.data.images import BadImage, EncodedImages, ImageSet, decode_bytes, warn_once
from trainer.data.sources import Capabilities
from trainer.data.transforms import sample_seed
from trainer.errors import UserError

log = logging.getLogger("trainer")

MAX_IMAGE_BYTES = 1 << 26  # one image in a stream: 64 MiB at most (a bigger member is skipped, said once)
MAX_HELD_BYTES = 1 << 30  # a streamed val split is held in memory: 1 GiB at most
MAX_LIST_BYTES = 1 << 22  # classes.txt, sizes.json read from beside the shards

Sample = tuple[str, bytes, Any]  # (name, encoded image, label as stored)


def stream_urls(pattern: str, key: str) -> list[str]:
    """The shards a pattern names: URLs with brace ranges (``pipe:cat s/train-{000..009}.tar``), or local
    shards as ``expand_shards`` finds them."""
    if not is_url(pattern):
        return expand_shards(pattern, key)
    import braceexpand

    return [url for part in pattern.split("::") for url in braceexpand.braceexpand(part)]


def tar_samples(stream: Any, url: str, label_key: str, field: str | None) -> Iterator[Sample]:
    """A tar stream's samples in stored order: members grouped by their key (``dir/key.ext``), each sample
    with an image (.jpg/.jpeg/.png/.webp) and a label kept; members over the bounds skipped (said once)."""
    key, image, label = None, None, None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for m in tar:
            base = os.path.basename(m.name)
            if not m.isfile() or "." not in base or base.startswith("__"):
                continue
            sample, ext = os.path.join(os.path.dirname(m.name), base.split(".", 1)[0]), base.split(".", 1)[1].lower()
            if sample != key:
                if image is not None and label is not None:
                    yield f"{url}#{key}", image, label
                key, image, label = sample, None, None
            if ext in IMAGE_KEYS and image is None:
                if m.size > MAX_IMAGE_BYTES:
                    warn_once(f"big:{url}", f"{url}#{sample}: an image of {m.size} bytes is skipped (64 MiB at most)")
                    continue
                image = tar.extractfile(m).read()  # type: ignore[union-attr]
            elif ext == label_key and m.size <= MAX_LABEL_BYTES:
                label = parse_label(tar.extractfile(m).read(), field, f"{url}#{sample}.{label_key}")  # type: ignore[union-attr]
    if image is not None and label is not None:
        yield f"{url}#{key}", image, label


@dataclass
class TarShard:
    """One WebDataset shard, opened with ``webdataset.gopen`` (a path, ``pipe:``, http, s3, ...)."""

    url: str
    label_key: str = "cls"
    label_field: str | None = None

    @property
    def name(self) -> str:
        return self.url

    def __call__(self) -> Iterator[Sample]:
        import webdataset

        try:
            stream = webdataset.gopen(self.url)
        except Exception as e:
            raise UserError(f"{self.url}: cannot be opened ({type(e).__name__}: {e}); check the shard's URL.") from None
        try:
            yield from tar_samples(stream, self.url, self.label_key, self.label_field)
        except (tarfile.TarError, OSError) as e:
            raise UserError(f"{self.url}: the stream is not a readable tar shard ({e}).") from None
        finally:
            with contextlib.suppress(Exception):  # a pipe that failed says so on closing: said above already
                stream.close()


@dataclass
class HFShard:
    """One shard of a Hugging Face ``IterableDataset`` (one of its files), its images not decoded."""

    data: Any
    index: int
    count: int
    image_column: str
    label_column: str
    where: str

    @property
    def name(self) -> str:
        return f"{self.where}#{self.index}/{self.count}"

    def __call__(self) -> Iterator[Sample]:
        part = self.data.shard(num_shards=self.count, index=self.index) if self.count > 1 else self.data
        j = 0
        # .iter, not iter(): inside a loader worker the latter would split the shard again among the workers
        for rows in part.iter(batch_size=64):
            for cell, label in zip(rows[self.image_column], rows[self.label_column]):
                name = f"{self.name}[{j}]"
                j += 1
                try:
                    data = cell_bytes(cell, name, self.image_column)
                except ValueError:
                    data = b""  # not an image: said by the decoder as a bad image, by name
                yield name, data, label


class StreamImages(ImageSet):
    """A streamed split: its shards (each a callable giving its samples), its class names, its length
    (known or estimated). Read by ``StreamEpoch``; labels are looked up as they are read."""

    exif = True

    def __init__(
        self, shards: list[Callable[[], Iterator[Sample]]], classes: list[str], length: int, exact: bool, where: str
    ) -> None:
        self.shards, self.classes, self.length, self.where = shards, list(classes), int(length), where
        self.lookup = {name: i for i, name in enumerate(self.classes)}
        self.buffer = 1000
        self.capabilities = Capabilities(
            kind=f"streamed ({where})",
            folds=False,
            balanced=False,
            duplicates=False,
            verify=False,
            cached_features=False,
            exact_length=exact,
        )

    def __len__(self) -> int:
        return self.length

    @property
    def targets(self) -> list[Any]:  # type: ignore[override]
        raise RuntimeError("a streamed split's labels are read with its images (data/sources.py declares it)")

    def index_of(self, label: Any, name: str) -> int:
        text = str(label).strip()
        if text in self.lookup:
            return self.lookup[text]
        if text.lstrip("-").isdigit() and 0 <= int(text) < len(self.classes):
            return int(text)
        raise BadImage(f"{name}: label {label!r} is not one of the {len(self.classes)} classes")

    def target_of(self, index: int) -> Any:
        return torch.tensor([float(index)]) if task_named(self.task).one_output else index

    def samples(self, shards: Iterable[int]) -> Iterator[Sample]:
        for i in shards:
            yield from self.shards[i]()

    def peek(self, n: int) -> list[bytes]:
        """The first ``n`` images of the stream (``image_size=auto`` reads their headers)."""
        return [data for _, data, _ in itertools.islice(self.samples(range(len(self.shards))), n)]

    def fingerprint_members(self) -> list[tuple[str, str]]:
        return [(str(getattr(s, "name", s)), "") for s in self.shards] + [("length", str(self.length))]


class HeldImages(EncodedImages):
    """A streamed split read once into memory (a val split), indexed from then on."""

    def __init__(self, blobs: list[bytes], names: list[str], targets: list[int]) -> None:
        self.blobs, self.names, self.targets = blobs, names, targets

    def fetch(self, index: int) -> bytes:
        return self.blobs[index]

    def byte_size(self, index: int) -> int:
        return len(self.blobs[index])


def hold(shards: list[Callable[[], Iterator[Sample]]], key: str) -> tuple[HeldImages, list[Any]]:
    """A val stream read into memory (1 GiB at most), with its labels as stored."""
    blobs, names, labels, total = [], [], [], 0
    for name, data, label in (sample for shard in shards for sample in shard()):
        total += len(data)
        if total > MAX_HELD_BYTES:
            raise UserError(
                f"{key}: the val stream holds more than {MAX_HELD_BYTES >> 30} GiB of images; a streamed val split "
                "is read into memory once. Give a smaller val split, or val shards on a local disk (read by index)."
            )
        blobs.append(data)
        names.append(name)
        labels.append(label)
    if not blobs:
        raise UserError(f"{key}: the val stream holds no sample with an image and a label.")
    return HeldImages(blobs, names, [0] * len(blobs)), labels


def read_beside(url: str, name: str) -> bytes | None:
    """A small file beside a shard (classes.txt, sizes.json), or None when there is none (or it is a pipe)."""
    if url.startswith("pipe:"):
        return None
    return read_small(url.rsplit("/", 1)[0] + "/" + name if "/" in url else name, quiet=True)


def read_small(url: str, quiet: bool = False) -> bytes | None:
    import webdataset

    try:
        if not is_url(url) and not os.path.isfile(os.path.expanduser(url)):
            if quiet:
                return None
            raise OSError("no such file")
        with webdataset.gopen(os.path.expanduser(url) if not is_url(url) else url) as f:
            data = f.read(MAX_LIST_BYTES + 1)
    except Exception:
        if quiet:
            return None
        raise UserError(f"{url}: cannot be read; give a text file with one class name a line.") from None
    if len(data) > MAX_LIST_BYTES:
        raise UserError(f"{url}: more than {MAX_LIST_BYTES} bytes, too large for a list")
    return data


def stream_length(shards: list[Any], given: int | None, sizes: dict[str, Any] | None, key: str) -> tuple[int, bool]:
    """(samples, exact): ``data.train_samples``, else sizes.json's counts, else estimated (said once)."""
    if given is not None:
        if int(given) < 1:
            raise UserError(f"data.train_samples={given}: give the samples an epoch holds (a number > 0), or null.")
        return int(given), True
    if sizes and all(os.path.basename(s.name) in sizes for s in shards):
        return sum(int(sizes[os.path.basename(s.name)]) for s in shards), True
    first = sum(1 for _ in shards[0]())
    length = first * len(shards)
    log.warning(
        "%s: %d samples an epoch, estimated as %d in the first shard x %d shards (the progress, the estimate and "
        "a time budget use it); give data.train_samples%s for the exact count.",
        key,
        length,
        first,
        len(shards),
        ", or a sizes.json beside the shards (write-shards writes one)," if isinstance(shards[0], TarShard) else "",
    )
    return length, False


def load_sizes(url: str) -> dict[str, Any] | None:
    import json

    raw = read_beside(url, "sizes.json")
    try:
        sizes = json.loads(raw) if raw else None
    except ValueError:
        return None
    return sizes if isinstance(sizes, dict) else None


def streamed_webdataset(
    train: str,
    val: str | None,
    classes_file: str | None,
    label: tuple[str, str | None],
    train_samples: int | None,
) -> Splits:
    """``data=webdataset`` streamed: train shards read in order, val read once into memory (or indexed
    when its shards are local)."""
    label_key, field = label
    shards = [TarShard(url, label_key, field) for url in stream_urls(train, "data.train")]
    if not val:
        raise UserError(
            f"data.train={train!r} is streamed: give its val split as data.val (shards too). A stratified "
            "data.val_split needs every label before training, which a stream does not give."
        )
    if is_url(val):
        val_set, val_labels = hold([TarShard(u, label_key, field) for u in stream_urls(val, "data.val")], "data.val")
    else:
        val_set, val_labels = shard_images(val, "data.val", label_key, field)
    raw = read_small(classes_file) if classes_file else read_beside(shards[0].url, "classes.txt")
    names = [line.strip() for line in raw.decode("utf-8", "replace").splitlines() if line.strip()] if raw else None
    val_set.targets, classes = label_indices(val_labels, names, "data.val")
    if names is None:
        log.warning(
            "data.train=%r: no classes.txt beside the shards and no data.classes_file: the %d classes are the val "
            "split's labels; a training label outside them is skipped as a bad sample.",
            train,
            len(classes),
        )
    length, exact = stream_length(shards, train_samples, load_sizes(shards[0].url), "data.train")
    return Splits(StreamImages(shards, classes, length, exact, train), val_set, classes)


def streamed_hf(
    data: Any, path: str, columns: tuple[str, str], splits: tuple[str, str], train_samples: int | None
) -> Splits:
    """``data=hf data.streaming=true``: an ``IterableDatasetDict``'s train split streamed shard by shard
    (one shard a file), its val split read once into memory."""
    import datasets

    image_column, label_column = columns
    train_split, val_name = splits
    if train_split not in data or val_name not in data:
        raise UserError(
            f"data.path={path!r} streamed has splits {', '.join(data)}: set data.train_split and data.val_name to "
            "two of them (a stratified data.val_split needs every label before training, which a stream does not give)."
        )
    parts = {}
    for split in (train_split, val_name):
        part = data[split]
        for column in columns:
            if part.features is not None and column not in part.features:
                raise UserError(f"{path}:{split}: no column {column!r}; set data.image_column / data.label_column.")
        if part.features is not None and isinstance(part.features.get(image_column), datasets.Image):
            part = part.cast_column(image_column, datasets.Image(decode=False))
        parts[split] = part
    feature = (parts[train_split].features or {}).get(label_column)
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    train, count = parts[train_split], parts[train_split].n_shards
    shards = [HFShard(train, i, count, image_column, label_column, f"{path}:{train_split}") for i in range(count)]
    val_shards = [HFShard(parts[val_name], 0, 1, image_column, label_column, f"{path}:{val_name}")]
    val_set, val_labels = hold(val_shards, f"data.val_name={val_name}")  # type: ignore[arg-type]
    val_set.targets, classes = label_indices(val_labels, names, f"data.path={path!r}")
    info = getattr(train.info, "splits", None) or {}
    known = getattr(info.get(train_split), "num_examples", None) if hasattr(info, "get") else None
    length, exact = stream_length(shards, train_samples or known, None, f"data.path={path!r}")
    return Splits(StreamImages(shards, classes, length, exact, f"{path}:{train_split}"), val_set, classes)


def shuffled(samples: Iterable[Sample], size: int, rng: random.Random) -> Iterator[Sample]:
    """A seeded shuffle buffer of ``size`` samples (bytes, not decoded images), emptied at the end."""
    buffer: list[Sample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = sample
    rng.shuffle(buffer)
    yield from buffer


def as_is(item: Any) -> Any:
    return item


class StreamEpoch(IterableDataset):
    """The batches of one rank's epoch of a streamed split (see the module's docstring): made in the
    loader workers, worker w the w-th of every K; ``set_epoch(epoch, start)`` resumes part-way."""

    def __init__(
        self,
        images: StreamImages,
        transform: Any,
        collate: Callable[[list[Any]], Any],
        *,
        seed: int,
        batch_size: int,
        workers: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.transform, self.collate = images, transform, collate
        self.seed, self.batch_size, self.workers = int(seed), int(batch_size), max(1, int(workers))
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.start_batch = 0, 0
        batches = len(images) // self.world_size // self.batch_size
        self.counts = [batches // self.workers + (w < batches % self.workers) for w in range(self.workers)]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """``start``: samples of this rank's epoch already trained (whole batches)."""
        self.epoch, self.start_batch = int(epoch), int(start) // self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start": self.start_batch * self.batch_size}

    def __len__(self) -> int:  # batches an epoch (a DataLoader with batch_size=None reports it)
        return sum(self.counts)

    def shards_of(self, worker: int) -> list[int]:
        order = torch.randperm(
            len(self.images.shards), generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        )
        return order.tolist()[self.rank :: self.world_size][worker :: self.workers]

    def samples(self, worker: int) -> Iterator[Sample]:
        """Worker ``worker``'s samples this epoch: its shards through the shuffle buffer, again if needed."""
        shards = self.shards_of(worker)
        rng = random.Random(sample_seed(self.seed, self.epoch, self.rank * self.workers + worker))
        for again in itertools.count():
            if again:
                rng.shuffle(shards)
            read = 0
            for sample in shuffled(self.images.samples(shards), self.images.buffer, rng):
                read += 1
                yield sample
            if not read:
                raise UserError(f"{self.images.where}: shards {shards} of this epoch hold no sample to train on.")

    def item(self, index: int, sample: Sample) -> Any:
        name, data, label = sample
        try:
            target = self.images.target_of(self.images.index_of(label, name))
            with torch.random.fork_rng(devices=[]):  # the per-sample augmentation seed, as for indexed sets
                torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
                return self.transform(decode_bytes(data, name, self.images.exif)), target
        except BadImage as e:
            return e

    def batches(self, worker: int, done: int) -> Iterator[Any]:
        """Worker ``worker``'s batches of the epoch after its first ``done`` (read again, not decoded)."""
        size, first = self.batch_size, (self.rank * self.workers + worker) << 32
        stream = itertools.islice(self.samples(worker), self.counts[worker] * size)
        for _ in itertools.islice(stream, done * size):
            pass
        batch = []
        for n, sample in enumerate(stream, start=done * size):
            batch.append(self.item(first + n, sample))
            if len(batch) == size:
                yield self.collate(batch)
                batch = []

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        start = min(self.start_batch, len(self))
        worker = ((info.id if info is not None else 0) + start) % self.workers  # taken in turn from the next one
        yield from self.batches(worker, len(range(worker, start, self.workers)))

    def __getitem__(self, index: int) -> Any:  # the batch probe's and the variant's first samples
        sample = next(itertools.islice(self.images.samples(range(len(self.images.shards))), index, None), None)
        if sample is None:
            raise IndexError(index)
        return self.item(index, sample)


class StreamLoader:
    """The train loader of a streamed split: ``StreamEpoch``'s batches from its workers, in turn. Workers
    start anew each epoch (the epoch and the place to resume from travel with them)."""

    drop_last = True

    def __init__(self, dataset: StreamEpoch, **options: Any) -> None:
        options = {**options, "persistent_workers": False, "collate_fn": as_is}
        self.dataset, self.batch_size = dataset, dataset.batch_size
        self.loader = DataLoader(dataset, batch_size=None, **options)
        self.num_workers = self.loader.num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.loader
        except UserError as e:  # raised in a worker: its own paragraph, not the worker's traceback around it
            said = re.findall(r"UserError: (.+)", str(e))
            raise UserError(said[-1] if said else str(e)) from None


def stream_workers(images: StreamImages, workers: int, world_size: int) -> int:
    """Loader workers for a stream: each needs a shard of its own, so at most shards / ranks (said once)."""
    shards = len(images.shards)
    if shards < world_size:
        raise UserError(
            f"{images.where}: {shards} shard(s) cannot be shared by {world_size} processes (each reads its own); "
            "write more, smaller shards (write-shards maxcount=...)."
        )
    most = shards // world_size
    if workers > most:
        log.info(
            "data.num_workers=%d: %d, each reading shards of its own (%d shards, %d process(es))",
            workers,
            most,
            shards,
            world_size,
        )
        return most
    return workers

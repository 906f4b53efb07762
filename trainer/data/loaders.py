"""Datasets of transformed images, samplers that resume part-way into an epoch, and the loaders."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import multiprocessing
import multiprocessing.context
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler, default_collate

from trainer.config.tasks import task_named
from trainer.data.datasets import Splits
from trainer.data.images import BadImage, FileImages, ImageSet
from trainer.data.resample import DeviceGeometry, RawJpeg, collate_raw, plan_resample
from trainer.data.sources import require
from trainer.data.streams import StreamEpoch, StreamImages, StreamLoader, stream_workers
from trainer.data.transforms import JointTransform, build_transforms, sample_seed
from trainer.errors import UserError

log = logging.getLogger(__name__)


class TransformedImages(Dataset):
    """Applies a transform to an :class:`ImageSet`. Keys ``(epoch, index)`` seed the augmentation."""

    def __init__(self, images: ImageSet, transform: Any, seed: int = 0, decode_on_device: bool = False) -> None:
        self.images, self.transform, self.seed = images, transform, seed
        self.geometry = DeviceGeometry(transform) if decode_on_device else None

    def __len__(self) -> int:
        return len(self.images)

    def _apply(self, index: int) -> tuple[Any, Any]:
        if self.geometry is not None and hasattr(self.images, "jpeg"):
            found = self.images.jpeg(index)
            if found is not None:  # decoded and resampled on the training device
                data, height, width = found
                ops = self.geometry.plan(height, width)
                return RawJpeg(
                    data, ops, self.images.paths[index], (height, width), plan_resample(ops, height, width)
                ), self.images.target(index)
        img, target = self.images.load(index), self.images.target(index)
        if isinstance(self.transform, JointTransform):
            try:
                return self.transform(img, target)
            except BadImage as e:
                raise BadImage(f"{getattr(self.images, 'masks', [''] * (index + 1))[index]}: {e}") from None
        return self.transform(img), target

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, Any] | BadImage:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        try:
            if epoch is None:
                return self._apply(index)
            # Per-sample seed: the same augmentation for this sample in this epoch, in any worker,
            # before or after a resume. fork_rng keeps the caller's RNG (dropout etc.) untouched.
            # The transforms draw from the CPU generator only: seeding it alone spares torch.manual_seed's
            # lazy CUDA/MTIA seeding, which formats a stack trace per call (about 0.3 ms an image).
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
                return self._apply(index)
        except BadImage as e:
            return e  # skipped by collate_skipping_bad, reported by the run


def collate_skipping_bad(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images, targets, problems): images that could not be decoded are left out and named."""

    good = [it for it in items if not isinstance(it, BadImage)]
    if good:
        x, y = default_collate(good)
    else:
        x, y = torch.empty(0), torch.empty(0, dtype=torch.long)
    return x, y, [str(it) for it in items if isinstance(it, BadImage)]


class EpochSampler(Sampler):
    """Shuffles with a generator seeded by (seed, epoch) and can start part-way into an epoch.

    Yields ``(epoch, index)`` so the dataset can seed each sample's augmentation. With
    ``world_size`` processes each takes every world_size-th index of the epoch's order (padded by
    wrapping around, so every rank gets as many batches), like torch's DistributedSampler.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.rank, self.world_size = int(rank), max(1, int(world_size))
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def shard(self, epoch: int) -> list[int]:
        order = self.order(epoch)
        if self.world_size == 1:
            return order
        per_rank = math.ceil(self.size / self.world_size)
        padded = (order * (1 + per_rank * self.world_size // max(1, self.size)))[: per_rank * self.world_size]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.shard(epoch)[self.start :]:
            yield epoch, index

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size) - self.start

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start": self.start}


class BalancedSampler(EpochSampler):
    """``data.sampler=balanced``: each epoch draws as many samples as the split holds, every class
    equally likely (with replacement, so rare images repeat and frequent ones are left out), seeded by
    (seed, epoch) and sharded and resumed like :class:`EpochSampler`."""

    def __init__(self, targets: list[int], seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(len(targets), seed, shuffle=True, rank=rank, world_size=world_size)
        labels = torch.tensor(targets)
        counts = torch.bincount(labels).double()
        self.weights = (1.0 / counts)[labels]

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=g).tolist()


def default_num_workers(on_gpu: bool = False) -> int:
    """Loader workers for ``data.num_workers=auto``: the cores this process may use, less one for
    itself. Training on a GPU, decoding is the bottleneck and every core helps (shared between the
    processes of one node under torchrun); on a CPU the model needs the cores, so at most 8 workers."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if on_gpu:
        per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(0, min(32, per_process - 1))
    return max(0, min(8, cores - 1))


def pieces_per_batch(batch_size: int, workers: int) -> int:
    """How many pieces a batch is loaded in: up to one per worker, at least 16 images each, a
    divisor of the batch so every piece is the same size. A worker builds one piece at a time, so
    the first batch of an epoch is ready after one piece's images instead of a whole batch's."""
    limit = max(1, min(workers, batch_size // 16))
    return max(d for d in range(1, limit + 1) if batch_size % d == 0)


class MicroBatches(list):
    """The pieces of one batch, in order; :class:`DeviceBatches` joins them on the device."""


class MicroBatchSampler(Sampler):
    """Each batch of ``batch_size`` keys from ``sampler`` cut into pieces of ``piece`` keys (the
    loader's batch_sampler). Batches are formed exactly as ``DataLoader(batch_size, drop_last)`` forms
    them, so joining the pieces gives the same batches."""

    def __init__(self, sampler: Sampler, batch_size: int, piece: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.piece, self.drop_last = sampler, batch_size, piece, drop_last

    def batch_sizes(self) -> list[int]:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return [self.batch_size] * full + ([rest] if rest and not self.drop_last else [])

    def __iter__(self) -> Iterator[list[Any]]:
        keys = iter(self.sampler)
        for size in self.batch_sizes():
            batch = list(itertools.islice(keys, size))
            for k in range(0, size, self.piece):
                yield batch[k : k + self.piece]

    def __len__(self) -> int:
        return sum(math.ceil(size / self.piece) for size in self.batch_sizes())


class MicroBatchLoader:
    """A DataLoader whose workers build each batch together, piece by piece (see
    :func:`pieces_per_batch`); yields each batch as :class:`MicroBatches`. Same batches, same order,
    same augmentation (seeded per sample) as one worker per batch."""

    def __init__(
        self, dataset: Dataset, sampler: Sampler, batch_size: int, pieces: int, drop_last: bool, **loader_args: Any
    ) -> None:
        self.batch_sampler = MicroBatchSampler(sampler, batch_size, batch_size // pieces, drop_last)
        self.loader = DataLoader(dataset, batch_sampler=self.batch_sampler, **loader_args)
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last
        self.num_workers, self.pieces = self.loader.num_workers, pieces

    def __len__(self) -> int:
        return len(self.batch_sampler.batch_sizes())

    def __iter__(self) -> Iterator[MicroBatches]:
        sizes = self.batch_sampler.batch_sizes()  # read before the loader starts drawing keys
        pieces = iter(self.loader)
        for size in sizes:
            yield MicroBatches(next(pieces) for _ in range(math.ceil(size / self.batch_sampler.piece)))


class CachedFeatures(Dataset):
    """Backbone features computed once (linear probe), served with the same (epoch, index) keys."""

    def __init__(self, features: torch.Tensor, images: ImageSet) -> None:
        self.features, self.images = features, images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, Any]:
        index = key[1] if isinstance(key, tuple) else key
        return self.features[index], self.images.target(index)


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    sampler: EpochSampler
    input_spec: dict[str, Any]
    batch_size: int
    train_eval: DataLoader  # the training images with eval transforms, in order (feature caching)


class ShardSampler(Sampler):
    """Every world_size-th index from ``rank`` (evaluation: each sample once over all ranks)."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loaders(
    splits: Splits,
    spec: dict[str, Any],
    *,
    batch_size: int,
    num_workers: int,
    augment: str,
    random_erasing: float = 0.0,
    sampler: str = "shuffle",
    decode_on_device: bool = False,
    seed: int = 0,
    on_gpu: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Loaders:
    """Train loader (seeded shuffling and augmentation, drop_last) and val loader; sharded by rank.

    ``spec``: the input size, crop, interpolation, mean and std (``resolve_input``).
    """
    workers, task, on_device = num_workers, splits.task, decode_on_device
    if on_device and (task_named(task).per_pixel or not isinstance(splits.train, FileImages)):
        raise UserError(
            "data.decode=device decodes JPEG files of a classification dataset (data=imagefolder or "
            "data=multilabel_csv); this data is not. Use data.decode=workers."
        )
    train_tf = build_transforms(augment, spec, True, task, normalize=False, random_erasing=random_erasing)
    train_set = TransformedImages(splits.train, train_tf, seed, decode_on_device=on_device)
    val_set = TransformedImages(
        splits.val, build_transforms(augment, spec, False, task, normalize=False), seed, decode_on_device=on_device
    )
    if len(train_set) == 0 or len(val_set) == 0:
        raise UserError("the train or val split is empty: add images or change data.val_split.")
    common = _loader_options(workers, on_gpu, on_device, seed)
    if isinstance(splits.train, StreamImages):  # read in order: batches made in the workers
        order, train = _streamed(splits.train, train_tf, (batch_size, sampler), seed, (rank, world_size), common)
        val, pieces = _val_loader(val_set, batch_size, workers, rank, world_size, common), 1
    else:
        order = _train_sampler(splits, sampler, seed, rank, world_size)
        train, val, pieces = _train_and_val(train_set, val_set, order, batch_size, workers, rank, world_size, common)
    train_eval = DataLoader(
        TransformedImages(splits.train, val_set.transform, seed),
        batch_size=batch_size * 2,
        shuffle=False,
        num_workers=workers,
        pin_memory=on_gpu,
        collate_fn=collate_skipping_bad,
        multiprocessing_context=worker_context() if workers > 0 else None,
    )
    pieces_note = f" (each batch built by {pieces} together)" if pieces > 1 else ""
    log.info(
        f"data: {task}, {len(train_set)} train / {len(val_set)} val images, {len(splits.classes)} classes, input "
        f"{spec['size']}px ({spec['interpolation']}, crop_pct {spec['crop_pct']:.3f}), augment={augment}, batch "
        f"{batch_size}, {workers} workers{pieces_note}" + (", class-balanced sampling" if sampler == "balanced" else "")
    )
    if on_device:
        where = "the GPU" if on_gpu else "the main process"
        log.info(
            f"data.decode=device: JPEGs are decoded and resampled on {where}; the workers read files and draw the augmentation"
        )
    return Loaders(train, val, order, spec, batch_size, train_eval)


def _train_sampler(splits: Splits, kind: str, seed: int, rank: int, world_size: int) -> EpochSampler:
    """data.sampler: shuffle (each image once per epoch) | balanced (each class equally often)."""
    if kind != "balanced":
        return EpochSampler(len(splits.train), seed, shuffle=True, rank=rank, world_size=world_size)
    if not task_named(splits.task).one_label:
        raise UserError(
            f"data.sampler=balanced draws each class equally often, so it needs one class per image "
            f"(multiclass or binary data); this data is {splits.task}. Use data.sampler=shuffle."
        )
    return BalancedSampler([int(t) for t in splits.train.targets], seed, rank=rank, world_size=world_size)


@functools.cache
def worker_context() -> multiprocessing.context.BaseContext:
    """The one multiprocessing context of the loaders' workers, chosen here rather than inherited: inside
    a launcher's worker (joblib's loky, submitit) the process-wide default is the launcher's own context,
    whose processes a DataLoader cannot start. fork where the platform has it (PyTorch's usual choice on
    Linux: workers start at once, datasets need not be picklable), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _loader_options(workers: int, on_gpu: bool, on_device: bool, seed: int) -> dict[str, Any]:
    common: dict[str, Any] = dict(
        num_workers=workers,
        pin_memory=on_gpu,
        persistent_workers=workers > 0,
        collate_fn=collate_raw if on_device else collate_skipping_bad,
        # own generators: building an iterator must not draw from the global RNG
        generator=torch.Generator().manual_seed(int(seed)),
    )
    if workers > 0:
        common["prefetch_factor"] = 4
        common["multiprocessing_context"] = worker_context()
    return common


def _train_and_val(
    train_set: Dataset,
    val_set: Dataset,
    sampler: EpochSampler,
    batch_size: int,
    workers: int,
    rank: int,
    world_size: int,
    common: dict[str, Any],
) -> tuple[Any, Any, int]:
    """The train and val loaders: whole batches, or with several workers, batches built in pieces."""
    drop_last = len(sampler) > batch_size
    pieces = pieces_per_batch(batch_size, workers)
    val = _val_loader(val_set, batch_size, workers, rank, world_size, common)
    if pieces > 1:  # the workers build each batch together: a short wait at the start of an epoch
        return MicroBatchLoader(train_set, sampler, batch_size, pieces, drop_last, **common), val, pieces
    train = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)
    return train, val, pieces


def _val_loader(
    val_set: Dataset, batch_size: int, workers: int, rank: int, world_size: int, common: dict[str, Any]
) -> Any:
    """The val loader: each image once over all ranks, in order, batches of twice the training batch."""
    val_sampler = ShardSampler(len(val_set), rank, world_size) if world_size > 1 else SequentialSampler(val_set)
    pieces = pieces_per_batch(batch_size * 2, workers)
    if pieces > 1:
        return MicroBatchLoader(val_set, val_sampler, batch_size * 2, pieces, False, **common)
    return DataLoader(val_set, batch_size=batch_size * 2, sampler=val_sampler, **common)


def _streamed(
    images: StreamImages, transform: Any, batch: tuple[int, str], seed: int, where: tuple[int, int], common: dict
) -> tuple[StreamEpoch, StreamLoader]:
    """A streamed split's epochs (``data/streams.py``) and their loader: a worker per shard at most."""
    (batch_size, sampler), (rank, world_size) = batch, where
    if sampler == "balanced":
        require(images, "balanced", "data.sampler=balanced")
    workers = stream_workers(images, int(common["num_workers"]), world_size)
    epoch = StreamEpoch(
        images,
        transform,
        collate_skipping_bad,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
        rank=rank,
        world_size=world_size,
    )
    if len(epoch) == 0:
        raise UserError(
            f"{images.where}: {len(images)} samples over {world_size} process(es) give no whole batch of "
            f"{batch_size}: lower data.batch_size or give more data."
        )
    options = {k: v for k, v in common.items() if workers or k not in ("prefetch_factor", "multiprocessing_context")}
    return epoch, StreamLoader(epoch, **{**options, "num_workers": workers})

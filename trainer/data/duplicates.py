"""Exact duplicates, found at every run before training: the same image twice in a split, and the same
image in both train and val (leakage: the val score then counts images the model trained on).

Files are compared by their bytes: only files whose size another file shares are read (two files of
different sizes cannot be copies), then hashed (BLAKE2b, read in 1 MiB pieces, never whole), so a folder
of photos costs a ``stat`` per file and little more. Images held in memory are compared by their pixels.
A copy re-encoded, resized or cropped is not an exact duplicate: ``check-data`` looks for those.

``data.duplicates`` says what happens to val images that are copies of train images: ``drop_from_val``
(the default: the val score is then measured on images the model has not seen, as a user reading it
assumes; nothing is removed from training), ``warn`` (kept, said) or ``error`` (the run stops). Copies
within a split, and the same file under two labels, are said and kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.config.tasks import task_named
from trainer.data.datasets import Splits
from trainer.data.folds import FoldImages
from trainer.data.images import ImageSet
from trainer.data.sources import capabilities
from trainer.errors import UserError

log = logging.getLogger("trainer")

POLICIES = ("drop_from_val", "warn", "error")
CHUNK = 1 << 20
EXAMPLES = 3


def file_digest(path: str) -> str:
    """BLAKE2b of a file's bytes, read in pieces (an unreadable file: its own key, never a match)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for piece in iter(lambda: f.read(CHUNK), b""):
                h.update(piece)
    except OSError:
        return "unreadable:" + path
    return h.hexdigest()


def image_files(images: ImageSet) -> list[str] | None:
    paths = getattr(images, "paths", None)
    if paths is None and isinstance(getattr(images, "images", None), (list, tuple)):
        paths = images.images  # type: ignore[attr-defined]  # segmentation from files
    return [str(p) for p in paths] if paths is not None else None


def content_keys(splits: Splits) -> dict[str, list[str]]:
    """Per split, a key per image: equal keys, equal content (file bytes, or pixels held in memory)."""
    files = {name: image_files(images) for name, images in (("train", splits.train), ("val", splits.val))}
    sizes: dict[str, int] = {}
    for paths in files.values():
        for p in paths or []:
            try:
                sizes[p] = os.stat(p).st_size
            except OSError:
                sizes[p] = -1
    shared = {s for s, n in Counter(sizes.values()).items() if n > 1 and s >= 0}
    keys: dict[str, list[str]] = {}
    for name, images in (("train", splits.train), ("val", splits.val)):
        paths = files[name]
        if paths is not None:
            keys[name] = [f"{sizes[p]}:{file_digest(p)}" if sizes[p] in shared else f"path:{p}" for p in paths]
            continue
        held = getattr(images, "images", None)
        if hasattr(images, "byte_size"):  # images inside a container: digests of those whose size another shares
            keys[name] = container_keys(images, name)
        elif hasattr(images, "content_key"):
            keys[name] = [images.content_key(i) for i in range(len(images))]
        elif isinstance(held, torch.Tensor):
            keys[name] = [
                hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=16).hexdigest() for row in held
            ]
        else:  # an image set of another kind: nothing to compare
            keys[name] = [f"{name}#{i}" for i in range(len(images))]
    return keys


def container_keys(images: Any, name: str) -> list[str]:
    """Keys of images inside a container (shards) that know their sizes: only equal sizes are read."""
    sizes = [images.byte_size(i) for i in range(len(images))]
    shared = {s for s, n in Counter(sizes).items() if n > 1}
    return [f"{s}:{images.content_key(i)}" if s in shared else f"{name}#{i}" for i, s in enumerate(sizes)]


@dataclass
class Duplicates:
    """Groups of images with one content: (split, index) pairs."""

    groups: list[list[tuple[str, int]]] = field(default_factory=list)
    names: dict[str, list[str]] = field(default_factory=dict)

    def across(self) -> list[list[tuple[str, int]]]:
        return [g for g in self.groups if {s for s, _ in g} == {"train", "val"}]

    def val_copies_of_train(self) -> list[int]:
        """Val images whose content is also in train."""
        return sorted(i for g in self.across() for s, i in g if s == "val")

    def extra_within(self, split: str) -> int:
        """Copies beyond the first within ``split``."""
        return sum(max(0, sum(1 for s, _ in g if s == split) - 1) for g in self.groups)

    def name(self, member: tuple[str, int]) -> str:
        split, i = member
        names = self.names.get(split)
        return names[i] if names else f"{split} #{i}"


def find_duplicates(splits: Splits) -> Duplicates:
    keys = content_keys(splits)
    members: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for split in ("train", "val"):
        for i, key in enumerate(keys[split]):
            members[key].append((split, i))
    files = {s: image_files(images) for s, images in (("train", splits.train), ("val", splits.val))}
    every = [p for paths in files.values() for p in paths or []]
    root = os.path.commonpath(every) if len(every) > 1 and all(os.path.isabs(p) for p in every) else ""
    names = {s: [os.path.relpath(p, root) if root else p for p in paths] for s, paths in files.items() if paths}
    return Duplicates([g for g in members.values() if len(g) > 1], names)


def _labels_differ(group: list[tuple[str, int]], splits: Splits) -> bool:
    targets = {repr(getattr(splits, s).targets[i]) for s, i in group}
    return len(targets) > 1


def check_duplicates(splits: Splits, policy: str, where: str) -> Splits:
    """The paragraph about exact duplicates (said once, when there are any) and ``policy`` applied."""
    if policy not in POLICIES:
        raise UserError(f"data.duplicates={policy!r} is not valid: use {', '.join(POLICIES)}.")
    if task_named(splits.task).per_pixel and not image_files(splits.train):
        return splits  # generated shapes: nothing a user put there
    if not capabilities(splits.train).duplicates:
        log.info(
            "data.duplicates=%s: not checked; the training data is %s, not read before training, so copies between "
            "train and val cannot be looked for (check-data on an indexed copy can).",
            policy,
            capabilities(splits.train).kind,
        )
        return splits
    found = find_duplicates(splits)
    if not found.groups:
        return splits
    leaked = found.val_copies_of_train()
    parts = []
    if leaked:
        examples = "; ".join(
            f"{found.name(next(m for m in g if m[0] == 'val'))} = {found.name(next(m for m in g if m[0] == 'train'))}"
            for g in found.across()[:EXAMPLES]
        )
        parts.append(
            f"{len(leaked)} of {len(splits.val)} val images are byte-for-byte copies of train images (the val "
            f"score would count images the model trained on), e.g. {examples}"
        )
    for split in ("train", "val"):
        extra = found.extra_within(split)
        if extra:
            parts.append(f"{extra} extra copies within {split}")
    conflicts = [g for g in found.groups if task_named(splits.task).one_label and _labels_differ(g, splits)]
    if conflicts:
        shown = "; ".join(" and ".join(found.name(m) for m in g[:2]) for g in conflicts[:EXAMPLES])
        parts.append(f"{len(conflicts)} images under two different labels (one of them is wrong), e.g. {shown}")
    paragraph = f"{where}: exact duplicates: " + "; ".join(parts) + "."
    if leaked and policy == "error":
        raise UserError(
            paragraph + " Stopped (data.duplicates=error): remove the copies from val, or set "
            "data.duplicates=drop_from_val to leave them out of val, or =warn to keep them."
        )
    if leaked and policy == "drop_from_val":
        keep = sorted(set(range(len(splits.val))) - set(leaked))
        if not keep:
            raise UserError(
                paragraph + " Every val image is a copy of a train image: give a val split of other images."
            )
        log.warning(
            "%s Left out of val (data.duplicates=drop_from_val): %d images, %d remain; =warn keeps them.",
            paragraph,
            len(leaked),
            len(keep),
        )
        return Splits(splits.train, FoldImages(splits.val, keep), splits.classes, splits.task)
    log.warning("%s %s", paragraph, "Kept (data.duplicates=warn)." if leaked else "Kept.")
    return splits

"""What a run trained on, kept in its checkpoints: the classes, the images per split and a digest of each
split's files and labels. A resume compares it with the data as they are now (``check_same_data``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from trainer.data.datasets import Splits
from trainer.data.images import ImageSet, SegmentationImages
from trainer.errors import UserError

log = logging.getLogger("trainer")


def _members(images: ImageSet) -> tuple[list[tuple[str, str]], list[torch.Tensor]]:
    """An image set's (file, label) pairs, or the tensors of images held in memory."""
    if hasattr(images, "fingerprint_members"):  # a stream: its shards and length (its images are not listed)
        return images.fingerprint_members(), []
    if isinstance(images, SegmentationImages):
        if isinstance(images.images, torch.Tensor):
            return [], [images.images, torch.as_tensor(images.masks)]
        return [(str(p), str(m)) for p, m in zip(images.images, images.masks)], []
    paths = getattr(images, "paths", None) or getattr(images, "names", None)  # files, or images in containers
    if paths is not None:
        return [(str(p), repr(t)) for p, t in zip(paths, images.targets)], []
    held = getattr(images, "images", None)
    return [], [held] if isinstance(held, torch.Tensor) else []


def fingerprint(splits: Splits) -> dict[str, Any]:
    """What a run trained on, for a resume to compare: the classes, the images per split, and a digest of
    each split's sorted files (relative to their common folder, so a moved data folder still matches) with
    their labels, or of the images themselves when they are held in memory."""
    import hashlib

    members = {name: _members(images) for name, images in (("train", splits.train), ("val", splits.val))}
    every = [path for pairs, _ in members.values() for pair in pairs for path in pair if os.path.isabs(path)]
    root = os.path.commonpath(every) if every else ""
    out: dict[str, Any] = {"classes": list(splits.classes), "task": splits.task}
    for name, images in (("train", splits.train), ("val", splits.val)):
        pairs, tensors = members[name]
        h = hashlib.sha256()
        for pair in sorted(
            tuple(os.path.relpath(p, root) if root and os.path.isabs(p) else p for p in x) for x in pairs
        ):
            h.update(("\0".join(pair) + "\n").encode())
        for tensor in tensors:
            h.update(tensor.contiguous().numpy().tobytes())
        h.update(repr([images.targets[i] for i in range(len(images))] if not pairs else "").encode())
        out[name] = {"images": len(images), "digest": h.hexdigest()[:16]}
    return out


def data_changes(before: Any, now: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's ``fingerprint`` and the data's now (empty: the same data)."""
    if not isinstance(before, dict):
        return []  # a checkpoint from before fingerprints: nothing to compare
    changes = []
    if list(before.get("classes") or []) != now["classes"]:
        changes.append(f"classes {before.get('classes')} -> {now['classes']}")
    for split in ("train", "val"):
        old, new = before.get(split) or {}, now[split]
        if old.get("images") != new["images"]:
            changes.append(f"{split} images {old.get('images')} -> {new['images']}")
        elif old.get("digest") != new["digest"]:
            changes.append(f"the {split} split's files or labels differ (same count, {new['images']})")
    return changes


def check_same_data(before: Any, now: dict[str, Any], allowed: bool) -> None:
    """A resume on other data than the checkpoint's: refused, or with resume_on_changed_data=true logged."""
    changes = data_changes(before, now)
    if not changes or any(c.startswith("classes ") for c in changes):
        return  # other classes: the run's own check refuses them, whatever this key says
    said = "; ".join(changes)
    if not allowed:
        raise UserError(
            f"resume: the data differ from what this run trained on ({said}); its split and the sampler's "
            "place in the epoch would be recomputed over other images. Resume with the same data, start a new "
            "run, or add resume_on_changed_data=true to go on with the data as they are now."
        )
    log.warning("resume on changed data (resume_on_changed_data=true): %s", said)

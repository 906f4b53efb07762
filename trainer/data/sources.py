"""What a data source can do, declared once, and the one refusal when a run asks for more.

Indexed sources (folders, CSVs, sets in memory, local WebDataset shards, Arrow/Parquet sets) find each
image by its number and hold every label before training: everything works on them. Streamed sources
(shards behind a URL, a Hugging Face ``IterableDataset``: ``data/streams.py``) are read in order, once an
epoch, and their labels are only known as they are read. What a source cannot do is refused in one
paragraph when the run is built, naming the key and what to do instead, rather than failing mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.errors import UserError


@dataclass(frozen=True)
class Capabilities:
    """What a split's source can do. ``kind`` names it in a message."""

    kind: str = "an indexed source"
    folds: bool = True  # data.folds: split by index, stratified by the labels
    balanced: bool = True  # data.sampler=balanced, loss weights `balanced`: every label before training
    duplicates: bool = True  # data.duplicates: every image's bytes before training
    verify: bool = True  # data.verify, check-data, write-shards: every image by index
    cached_features: bool = True  # finetune.cache_features: the train images in order, by index
    exact_length: bool = True  # the epoch's length is known, not estimated


INDEXED = Capabilities()

# What each refusal says: the setting asked for, why a stream cannot, and what to do instead.
NEEDS = {
    "folds": ("data.folds", "K-fold splits the training images by index and stratifies them by their labels"),
    "balanced": (
        "data.sampler=balanced / a loss weight `balanced`",
        "class balancing needs every image's label before training",
    ),
    "verify": ("data.verify=true", "it reads every image by index"),
    "cached_features": ("finetune.cache_features=true", "caching features reads the training images by index"),
}


def capabilities(images: Any) -> Capabilities:
    """The declared capabilities of an image set (an indexed one unless it says otherwise)."""
    return getattr(images, "capabilities", INDEXED)


def require(images: Any, ability: str, asked: str | None = None) -> None:
    """Refuse, in one paragraph, a setting the source of ``images`` cannot serve."""
    caps = capabilities(images)
    if getattr(caps, ability):
        return
    setting, why = NEEDS.get(ability, (ability, "it needs every image by index"))
    raise UserError(
        f"{asked or setting}: {why}, and this training data is {caps.kind}, read in order once an epoch. "
        "Leave the setting out, or train on an indexed copy: shards on a local or mounted disk (`write-shards`, "
        "or copy them) are read by index, as are folders and Arrow/Parquet files."
    )

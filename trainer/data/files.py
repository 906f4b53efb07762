"""Which files of a folder are images: what every command that walks a folder counts, and what it
leaves out (hidden files, zip and OS leftovers, files that are not images, formats whose plugin is
missing), said once in one line."""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# What Pillow opens as it is installed (the JPEG spellings phones and browsers write included).
IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
}  # fmt: skip
JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif")
# What Pillow opens with a plugin: the extension -> the plugin's check and how to install it.
PLUGIN_EXTENSIONS = {
    ".heic": "pillow-heif (pip install 'transfer-trainer[heif]')",
    ".heif": "pillow-heif (pip install 'transfer-trainer[heif]')",
    ".avif": "Pillow with AVIF support (pip install -U pillow) or pillow-heif older than 1.0",
}
# Names that are never data: OS and tool leftovers (a zip made on macOS, Windows' thumbnail caches,
# a Synology NAS's thumbnails, Python's caches). Any name starting with a dot is hidden too.
SYSTEM_NAMES = {
    "__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini", "@eadir", "$recycle.bin",
    "system volume information", "__pycache__", "icon\r",
}  # fmt: skip


def is_hidden(name: str) -> bool:
    """A dot name (.DS_Store, ._photo.jpg from a Mac zip, .ipynb_checkpoints, .git) or a system leftover."""
    return name.startswith((".", "~$")) or name.lower() in SYSTEM_NAMES


@functools.cache
def plugin_extensions() -> frozenset[str]:
    """The extensions a Pillow plugin makes readable here (registered once, when it is installed)."""
    from PIL import features

    found = set()
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        found |= {".heic", ".heif"}
        if hasattr(pillow_heif, "register_avif_opener"):
            pillow_heif.register_avif_opener()
            found.add(".avif")
    except ImportError:
        pass
    if features.check("avif"):
        found.add(".avif")
    return frozenset(found)


def readable_extensions() -> set[str]:
    return IMAGE_EXTENSIONS | plugin_extensions()


@dataclass
class LeftOut:
    """Files a walk did not take, by reason, with an example of each; said once in one line."""

    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    kinds: Counter = field(default_factory=Counter)  # extensions of the files that are not images

    def add(self, reason: str, path: Path | str, count: int = 1) -> None:
        self.reasons[reason] += count
        self.examples.setdefault(reason, str(path))

    def note_file(self, path: Path) -> None:
        """A file that is not hidden and not one of ``readable_extensions``: why it is left out."""
        ext = path.suffix.lower()
        if ext in PLUGIN_EXTENSIONS:
            self.add(f"{ext} files need {PLUGIN_EXTENSIONS[ext]}", path)
        else:
            self.kinds[ext or "(no extension)"] += 1
            self.add("not image files", path)

    def __len__(self) -> int:
        return sum(self.reasons.values())

    def describe(self) -> str:
        parts = []
        for reason, n in self.reasons.most_common():
            detail = f"e.g. {self.examples[reason]}"
            if reason == "not image files":
                detail = ", ".join(f"{k} {ext}" for ext, k in self.kinds.most_common(5)) + f"; {detail}"
            parts.append(f"{n} {reason} ({detail})")
        return "; ".join(parts)

    def say(self, where: str) -> None:
        """One log line naming how many files were left out and why (nothing when none were)."""
        if len(self):
            log.warning("%s: %d files left out: %s", where, len(self), self.describe())


HIDDEN = "hidden or system files (dot names, __MACOSX, Thumbs.db, desktop.ini: OS and zip leftovers)"


def count_files(folder: Path) -> int:
    """How many files a folder holds, all levels (a left-out folder is counted by its files)."""
    return sum(len(files) for _, _, files in os.walk(folder))


def list_images(folder: Path, left: LeftOut, recursive: bool = True) -> list[Path]:
    """The image files under ``folder`` (at every level, or only its own), sorted; what is not taken
    goes to ``left``."""
    readable = readable_extensions()
    found = []
    for here, dirs, files in os.walk(folder):
        if not recursive:
            dirs.clear()
        base = Path(here)
        for d in [d for d in dirs if is_hidden(d)]:
            dirs.remove(d)
            left.add(HIDDEN, base / d, count_files(base / d))
        dirs.sort()
        for name in files:
            path = base / name
            if is_hidden(name):
                left.add(HIDDEN, path)
            elif path.suffix.lower() in readable:
                found.append(path)
            else:
                left.note_file(path)
    return sorted(found)


def class_folders(root: Path, left: LeftOut) -> list[str]:
    """The class folders under ``root``, sorted by name; hidden and system folders and loose files go to ``left``."""
    names = []
    for entry in sorted(root.iterdir()):
        if is_hidden(entry.name):
            left.add(HIDDEN, entry, count_files(entry) if entry.is_dir() else 1)
        elif entry.is_dir():
            names.append(entry.name)
        else:
            left.add("files outside the class folders", entry)
    same: dict[str, list[str]] = {}
    for name in names:
        same.setdefault(" ".join(name.lower().replace("_", " ").replace("-", " ").split()), []).append(name)
    for group in (g for g in same.values() if len(g) > 1):
        log.warning(
            "%s: class folders %s differ only in case, spaces or - and _: they are different classes. Merge "
            "them into one folder if they mean the same thing.",
            root,
            ", ".join(repr(n) for n in group),
        )
    return names

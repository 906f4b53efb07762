"""Where `predict`, `evaluate` and `export-model` write: only files of their own kind are replaced, and
every file appears whole or not at all.

A command told ``out=`` may create new files, and may replace a file it wrote itself (a predictions
CSV over a predictions CSV, a report over a report, an export over an export). Anything else at that
name — a checkpoint, an image, a config, a run's own metrics, a folder — is refused with its name,
before any work is done.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from trainer.errors import UserError

HEAD_BYTES = 64 * 1024  # what is read of an existing file to tell whose it is


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def csv_with_header(first: str) -> Callable[[Path], bool]:
    """A CSV whose first column is ``first`` (what our CSVs start with)."""

    def ours(path: Path) -> bool:
        line = _head(path).split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        return line == first or line.startswith(first + ",")

    return ours


def json_with_keys(*keys: str) -> Callable[[Path], bool]:
    """A small JSON object holding every one of ``keys``."""

    def ours(path: Path) -> bool:
        if path.stat().st_size > 4 * 1024 * 1024:
            return False
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)

    return ours


def _refuse(path: Path, what: str, key: str, given: Path | None = None) -> UserError:
    where = f"{key}={given}: {path}" if given is not None else f"{key}={path}"
    return UserError(
        f"{where} is {what}, which this command did not write, so it is left as it is. Give {key}= a new "
        "name (or remove that file yourself if you are sure)."
    )


def check_file(path: Path, ours: Callable[[Path], bool], kind: str, key: str = "out") -> None:
    """``path`` may be written: it does not exist, or it is a ``kind`` file that ``ours`` recognises."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise _refuse(path, "a folder" if path.is_dir() else "a link or other non-file", key)
    if path.exists() and not ours(path):
        raise _refuse(path, f"a file that is not {kind}", key)


def check_folder(folder: Path, files: dict[str, Callable[[Path], bool]], kind: str, key: str = "out") -> None:
    """``folder`` may receive ``files``: each one already there must be one of ours (its check)."""
    if folder.exists() and not folder.is_dir():
        raise _refuse(folder, "a file (this command writes a folder)", key)
    for name, ours in files.items():
        path = folder / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise _refuse(path, "a folder, link or other non-file", key, folder)
        if path.exists() and not ours(path):
            raise _refuse(path, f"a file that is not part of {kind}", key, folder)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """checkpoint.atomic_file with the ``output`` fault point (a command's output, just before its rename)."""
    from trainer.runs.checkpoint import atomic_file as atomic

    with atomic(path, "output") as tmp:
        yield tmp

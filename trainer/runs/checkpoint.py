"""Atomic checkpoint writes, safe loads and verification, the newest valid checkpoint of a run folder, RNG state."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.errors import Exit, UserError


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, point: str | None = None) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (``.<name>.<pid>.tmp``, which a run folder's lock cleans up
    if its writer was killed); on success it is synced and renamed over ``path``, on any error (Ctrl-C
    included) removed: a reader never sees half a file, a crash leaves the old one. ``point``: the fault
    point reached just before the rename."""
    from trainer.runs.failpoints import failpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        if point:
            failpoint(point, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` written to ``path`` through ``atomic_file``."""
    with atomic_file(path, "save" if path.suffix == ".pt" else None) as tmp:
        tmp.write_bytes(data)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


DIGEST_KEY = "digest"


def state_digest(state: Any) -> str:
    """sha256 over everything a checkpoint holds (every tensor's bytes, dtype and shape, every other
    value's repr, with its key path), so that the file can vouch for itself wherever it is copied."""
    import hashlib

    h = hashlib.sha256()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, torch.Tensor):
            t = node.detach().cpu().contiguous()
            h.update(f"{path}:{t.dtype}:{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(node, dict):
            for k, v in node.items():
                if not (path == "" and k == DIGEST_KEY):
                    walk(v, f"{path}/{k}")
        elif isinstance(node, (list, tuple)):
            h.update(f"{path}:{type(node).__name__}{len(node)}:".encode())
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")
        else:
            h.update(f"{path}={node!r};".encode())

    walk(state, "")
    return h.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` with its own digest inside, atomically (temp file, fsync, rename), then the
    file's sha256 beside it (written last; a quick check while the file stays in its run folder)."""
    import hashlib
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({**state, DIGEST_KEY: state_digest(state)}, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_bytes(_sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    _fsync_dir(path.parent)
    return path


def link_checkpoint(src: Path, dst: Path) -> None:
    """Make ``dst`` the same checkpoint as ``src`` (hard link, else copy), atomically, sidecar too."""
    import shutil

    for a, b in ((src, dst), (_sidecar(src), _sidecar(dst))):
        if not a.exists():
            continue
        tmp = b.with_name(f".{b.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(a, tmp)
        except OSError:
            shutil.copyfile(a, tmp)
        os.replace(tmp, b)
    _fsync_dir(dst.parent)


def amend_checkpoint(path: Path, entries: dict[str, Any], state: dict[str, Any] | None = None) -> None:
    """``path`` rewritten with ``entries`` added to its state (atomically, with its digest and sidecar
    anew); every checkpoint of its folder that was the same file (last.pt, the numbered one) follows it.
    ``state``: the file's state when the caller has just loaded it."""
    state = state if state is not None else load_checkpoint(path)
    same = [p for p in path.parent.glob("*.pt") if p != path and p.samefile(path)]
    save_checkpoint({**{k: v for k, v in state.items() if k != DIGEST_KEY}, **entries}, path)
    for other in same:
        link_checkpoint(path, other)


def prune_checkpoints(folder: Path, keep_last: int, pattern: str = "epoch*-step*.pt") -> list[Path]:
    """Remove all but the newest ``keep_last`` numbered checkpoints (last.pt and best.pt are separate files)."""
    numbered = sorted(folder.glob(pattern))
    removed = numbered[:-keep_last] if keep_last > 0 else numbered
    for p in removed:
        p.unlink(missing_ok=True)
        _sidecar(p).unlink(missing_ok=True)
    return removed


def verify_checkpoint(path: Path) -> None:
    """Compare the file with the sha256 written after it; a mismatch means corruption."""
    import hashlib

    side = _sidecar(path)
    if not side.is_file():
        return  # a file from elsewhere: nothing to compare with
    fields = side.read_text().split()
    expected = fields[0] if fields else ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != expected:
        raise UserError(
            f"checkpoint {str(path)!r} is corrupt: its sha256 does not match {side.name} written "
            "when it was saved (the file changed or was cut short since). Resume from another "
            "checkpoint in the same folder, or with resume=auto, which picks the newest valid one."
        )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read one of our checkpoints with ``weights_only=True`` (no code runs); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {str(path)!r} does not exist. Give resume=auto, a run folder, "
            "or the path of a .pt file under a run's checkpoints/ folder."
        )
    if path.stat().st_size == 0:
        raise UserError(
            f"checkpoint {str(path)!r} is empty (0 bytes): it was never fully written. Resume "
            "from another checkpoint in the same folder, or with resume=auto."
        )
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(
            f"checkpoint {str(path)!r} cannot be read: it is truncated, corrupt, not a "
            f"checkpoint, or holds objects that are not plain data ({type(e).__name__}: {first}). "
            "Nothing in it was run. Resume from another checkpoint instead."
        ) from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise UserError(
            f"checkpoint {str(path)!r} is not a training checkpoint of this tool "
            "(no model/epoch entries). To start from its weights, use model.weights=PATH."
        )
    verify_digest(state, str(path))
    return state


def verify_digest(state: dict[str, Any], where: str) -> None:
    """Compare a checkpoint's contents with the digest saved inside it (files older than the digest have none)."""
    expected = state.get(DIGEST_KEY)
    if expected is not None and state_digest(state) != expected:
        raise UserError(
            f"checkpoint {where!r} is corrupt: its contents do not match the digest saved inside it "
            "(bytes changed since it was written: a bad copy, disk or transfer). Resume from another "
            "checkpoint of the run, or with resume=auto, which picks the newest valid one."
        )


class StorageError(UserError):
    """The run folder cannot be written (full disk, read-only, no permission); ``exit_code`` 4 for a full disk."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


STORAGE_ERRNOS = {
    errno.ENOSPC: Exit.DISK_FULL,
    errno.EDQUOT: Exit.DISK_FULL,
    errno.EROFS: Exit.MISTAKE,
    errno.EACCES: Exit.MISTAKE,
    errno.EPERM: Exit.MISTAKE,
}


def storage_error(e: OSError, run_dir: Path) -> StorageError:
    """One paragraph for a write that failed for want of space or permission: which file, and what survived."""
    code = STORAGE_ERRNOS[e.errno]  # type: ignore[index]
    what = {4: "the disk is full", 2: "the folder cannot be written (read-only or no permission)"}[code]
    kept, _ = newest_valid_checkpoint(run_dir)
    survived = (
        f"The previous checkpoint is intact: {kept}; continue from it with `train resume={run_dir}` once there is room."
        if kept is not None
        else "No checkpoint of this run had been written yet."
    )
    fix = "Free space, or give the run" if code == 4 else "Give the run"
    return StorageError(
        f"cannot write {e.filename or run_dir}: {what} ({e.strerror}). {survived} {fix} a folder on a "
        "writable disk (hydra.run.dir=...); nothing half-written was left behind.",
        code,
    )


def newest_valid_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of a run that loads and matches its checksum, and the problems met on the way."""
    folder = run_dir / "checkpoints"
    candidates = [folder / "last.pt"] + sorted(folder.glob("epoch*-step*.pt"), reverse=True)
    problems = []
    for c in candidates:
        if not c.is_file():
            continue
        try:
            load_checkpoint(c)
            return c, problems
        except UserError as e:
            problems.append(str(e).split(":")[0] + ": " + str(e).split(": ", 1)[-1].split(".")[0])
    return None, problems


def checkpoint_of(target: str | os.PathLike, key: str = "resume", names: tuple[str, ...] = ("last.pt",)) -> Path:
    """A checkpoint file, or a run folder (-> the first of ``names`` under its checkpoints/, or beside it)."""
    p = Path(target).expanduser()
    if p.is_dir():
        for name in names:
            for candidate in (p / "checkpoints" / name, p / name):
                if candidate.is_file():
                    return candidate
        raise UserError(f"{key}={str(target)!r}: this folder holds no checkpoints/{' or '.join(names)}.")
    if not p.is_file():
        raise UserError(f"{key}={str(target)!r}: no such checkpoint file or run folder.")
    return p


def run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def is_finished(run_dir: Path) -> bool:
    try:
        return bool(json.loads((run_dir / "metrics.json").read_text()).get("finished"))
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- RNG state (weights_only-safe)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def inference_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights a trained checkpoint is used with: its EMA when the run kept one (what was evaluated
    and chose best.pt), else the trained weights."""
    return state.get("ema") or state["model"]

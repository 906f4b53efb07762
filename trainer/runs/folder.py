"""One run per run folder, and nothing written into it before the run is accepted.

Hydra would write ``.hydra/`` and start ``train.log`` before the run's own code runs, so a second
run in the same folder, or a resume refused for a config that does not fit its checkpoint, would
already have changed the folder. Here ``hydra.output_subdir`` is null: :class:`RunFolder` takes an
OS lock on the folder (released by the kernel when the process ends, so a kill -9 leaves no stale
lock), holds the log lines in memory, and writes ``.hydra/`` and the held lines once the run is
accepted. A refused run leaves the folder as it found it.
"""

from __future__ import annotations

import copy
import logging
import logging.handlers
import os
import socket
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.errors import UserError

LOCK_NAME = ".lock"


class FolderInUse(UserError):
    """Another live process holds this run folder."""


def _lock_holder(fd: int) -> str:
    """'process PID' of the process holding the POSIX lock on ``fd``'s file (F_GETLK)."""
    import fcntl
    import struct

    layout = "hhqqi4x"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid
    try:
        query = struct.pack(layout, fcntl.F_WRLCK, 0, 0, 0, 0)
        pid = struct.unpack(layout, fcntl.fcntl(fd, fcntl.F_GETLK, query))[4]
    except (OSError, struct.error):
        pid = 0
    return f"process {pid} on {socket.gethostname()}" if pid > 0 else "another process"


class RunFolder:
    def __init__(self, run_dir: Path, resuming: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.resuming = resuming
        self._fd: int | None = None
        self._held: list[tuple[logging.Handler, logging.handlers.MemoryHandler]] = []
        self._record: tuple[DictConfig, Any] | None = None
        self.settled = False

    def open(self, cfg: DictConfig, hydra_cfg: Any) -> None:
        """Hold the log, lock the folder (FolderInUse when taken) and keep the config to record."""
        self.hold_log()
        self.claim()
        self.keep(cfg, hydra_cfg)

    def claim(self) -> None:
        """Lock the folder for this process, or refuse naming the process that holds it. The lock
        file stays empty: the holder is asked of the kernel, so a refused run writes nothing."""
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise FolderInUse(
                f"run folder {str(self.run_dir)!r} is in use by {holder}: two runs in one folder would "
                "overwrite each other's checkpoints, config and log. Wait for that run to end (or stop "
                "it), or give this run its own folder, e.g. hydra.run.dir=outputs/other."
            ) from None
        self._fd = fd

    def hold_log(self) -> None:
        """Keep the file log's lines in memory until :meth:`accept` (the console still shows them)."""
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.FileHandler):
                memory = logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)
                root.removeHandler(handler)
                root.addHandler(memory)
                self._held.append((handler, memory))

    def keep(self, cfg: DictConfig, hydra_cfg: Any) -> None:
        """The config as Hydra composed it, to write into .hydra/ once the run is accepted."""
        self._record = (copy.deepcopy(cfg), hydra_cfg)

    def accept(self) -> None:
        """The run goes ahead: write .hydra/ (config, overrides, Hydra's settings) and the held log lines."""
        if self.settled:
            return
        self.settled = True
        for stale in self.run_dir.glob("**/.*.tmp"):  # left by a writer killed mid-save (the lock says none is alive)
            stale.unlink(missing_ok=True)
        if self._record is not None:
            cfg, hydra_cfg = self._record
            folder = self.run_dir / ".hydra"
            folder.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, folder / "config.yaml")
            OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), folder / "overrides.yaml")
            OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
        self._release_log(flush=True)

    def discard(self) -> None:
        """The run was refused: drop the held log lines (they were shown on the console)."""
        self.settled = True
        self._release_log(flush=False)

    def settle(self) -> None:
        """At the end, however it ended: a new run's folder gets its record and log (a failed sweep job
        is listed from it); a resume not accepted leaves its folder untouched."""
        if not self.settled:
            self.discard() if self.resuming else self.accept()

    def _release_log(self, flush: bool) -> None:
        root = logging.getLogger()
        for handler, memory in self._held:
            root.removeHandler(memory)
            if flush:
                for record in memory.buffer:
                    handler.handle(record)
            memory.buffer.clear()
            memory.close()
            root.addHandler(handler)
        self._held.clear()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

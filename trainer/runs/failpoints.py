"""Fault injection for crash tests: ``TRAINER_FAILPOINT=<point>:<n>`` kills this process with SIGKILL
the n-th time it reaches that point. Points: ``step`` (after an optimizer step), ``save`` (a
checkpoint's bytes written, before its rename), ``epoch`` (after an epoch's checkpoint), ``calibrate``
(a finished run, before its temperature is fit).
``oom:<n>`` raises torch.OutOfMemoryError and ``crash:<n>`` a RuntimeError at the n-th ``step`` instead of killing;
``enospc:<n>`` / ``erofs:<n>`` raise the OSError of a full disk / read-only file system at the n-th ``save``;
``sigint:<n>`` sends this process SIGINT (Ctrl-C) at the n-th ``output`` (a command's output file written, before its rename);
``slow:<from>-<to>`` makes every ``step`` from ``from`` to ``to`` seconds after this process started take half
as long again (a machine that gets busy for a while; the time-budget benchmark's changing pace);
``TRAINER_FAILPOINT_JOB=j`` limits any point to job j of a sweep.
Under torchrun, ``TRAINER_FAILPOINT_RANK=r`` limits it to rank r, and it fires in the first attempt
only (not after torchrun restarted the workers). Unset (always, outside tests) it does nothing."""

from __future__ import annotations

import os
import signal
import time

_SPEC = os.environ.get("TRAINER_FAILPOINT", "")
_counts: dict[str, int] = {}
_STARTED = time.monotonic()
_last_step: list[float] = []
job: int | None = None  # this process's job number in a sweep (set by the CLI)


def failpoint(point: str, filename: str | None = None) -> None:
    if not _SPEC:
        return
    name, _, nth = _SPEC.partition(":")
    if name == "slow" and point == "step":
        return _slow(nth)
    raises = {"oom": "step", "crash": "step", "enospc": "save", "erofs": "save", "sigint": "output"}
    if name != point and raises.get(name) != point:
        return
    only_job = os.environ.get("TRAINER_FAILPOINT_JOB")
    if only_job is not None and str(job) != only_job:
        return
    only_rank = os.environ.get("TRAINER_FAILPOINT_RANK")
    if only_rank is not None and os.environ.get("RANK", "0") != only_rank:
        return
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(nth or 1):
        if name == "oom":
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (failpoint)")
        if name == "crash":
            raise RuntimeError("failpoint crash")
        if name in ("enospc", "erofs"):
            import errno

            code = errno.ENOSPC if name == "enospc" else errno.EROFS
            raise OSError(code, os.strerror(code), filename)
        os.kill(os.getpid(), signal.SIGINT if name == "sigint" else signal.SIGKILL)


def _slow(window: str) -> None:
    """Inside the window (seconds since start), sleep half of the time since the previous step."""
    now = time.monotonic()
    start, _, end = window.partition("-")
    if _last_step and float(start) <= now - _STARTED < float(end):
        time.sleep(0.5 * (now - _last_step[0]))
        now = time.monotonic()
    _last_step[:] = [now]

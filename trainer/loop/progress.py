"""The progress of an epoch: a tqdm bar on a terminal; in a piped or batch-job log, one line at each
tenth of the epoch (images, img/s, loss, time left), since a bar there prints nothing useful."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("trainer")


class ProgressLines:
    """The part of tqdm's interface the loop uses, writing a log line every 10% of ``total``."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", every: float = 0.1) -> None:
        self.total, self.n, self.desc = max(1, total), initial, desc
        self.step = max(1, int(self.total * every))
        self.next = (initial // self.step + 1) * self.step
        self.start, self.start_n = time.perf_counter(), initial
        self.postfix: dict[str, Any] = {}

    def update(self, n: int) -> None:
        self.n += n
        if self.n >= self.next and self.n < self.total:
            self.next = (self.n // self.step + 1) * self.step
            elapsed = max(1e-9, time.perf_counter() - self.start)
            rate = (self.n - self.start_n) / elapsed
            left = (self.total - self.n) / rate if rate > 0 else float("nan")
            extra = "".join(f"  {k} {v}" for k, v in self.postfix.items())
            log.info(
                "  %d/%d images (%d%%)  %.0f img/s%s  %s left in this epoch",
                self.n,
                self.total,
                100 * self.n // self.total,
                rate,
                extra,
                _clock(left),
            )

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        pass


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def progress(total: int, initial: int, desc: str, main: bool = True) -> Any:
    """A bar on a terminal, lines in a log, nothing off the main process."""
    from tqdm import tqdm

    if main and not sys.stderr.isatty():
        return ProgressLines(total, initial, desc)
    return tqdm(total=total, initial=initial, desc=desc, unit="img", leave=False, dynamic_ncols=True, disable=not main)

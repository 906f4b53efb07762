"""Stopping cleanly: SIGTERM / Ctrl-C finish the current step, save last.pt and stop; a second one
stops at once. Under torchrun every rank decides together, so all of them save and stop alike."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.distributed import collectives as dist
from trainer.errors import Exit

log = logging.getLogger(__name__)


class RunInterrupted(Exception):
    """SIGTERM or Ctrl-C: the run saved its state and stopped; ``train resume=...`` continues it."""

    def __init__(self, signum: int, epoch: int, step: int, run_dir: Path) -> None:
        self.signum = signum
        self.exit_code = Exit.signal(signum)
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step {step}; state saved in "
            f"{run_dir / 'checkpoints' / 'last.pt'}. Continue with: train resume={run_dir}"
        )


class InterruptGuard:
    """Catches SIGTERM and SIGINT while a run trains and says when to stop."""

    def __init__(self, distributed: bool = False, device: Any = None) -> None:
        self.distributed, self.device = distributed, device
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        """Ask the run to stop after the current optimizer step (what the signal handler does)."""
        if self.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s received: stopping after this step and saving a checkpoint (again to stop at once)",
            signal.Signals(signum).name,
        )

    def install(self) -> Callable[[], None]:
        """Handle the signals from now on; returns what puts the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        owner = os.getpid()

        def handler(signum: int, _frame: Any) -> None:
            # Ctrl-C reaches the whole process group: data-loader workers inherit this handler and
            # leave the decision (and the one message) to the process that trains
            if os.getpid() == owner:
                self.request(signum)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        return lambda: [signal.signal(sig, h) for sig, h in previous.items()]

    def should_stop(self, check_point: bool) -> bool:
        """Whether to stop now. Distributed: only at check points (every trainer.log_every steps and
        epoch boundaries), where the ranks agree, so that none is left waiting for the others."""
        if not self.distributed:
            return self.signum is not None
        if not check_point:
            return False
        if dist.any_rank(self.signum is not None, self.device):
            self.signum = self.signum or signal.SIGTERM
            return True
        return False

"""What can go wrong, and the one table of exit codes every console command ends with.

| exit | when | what is printed |
|---|---|---|
| 0 | done | |
| 1 | anything unexpected (a bug, a failure no check foresaw) | Python's traceback, also in the run's log |
| 2 | a user's mistake: a config value, a file, the data, a read-only folder | one paragraph: what, where, how to fix |
| 3 | a sweep finished, but some of its jobs failed | the failed jobs; the summary marks them |
| 4 | the disk is full | what was saved and where |
| 128 + N | stopped by signal N (Ctrl-C: 130, SIGTERM: 143) | where the state was saved and how to continue |

``exit_code_of`` is the table; ``run_console_command`` applies it around a command's body, and the
training job (``trainer.cli.train``), which runs inside Hydra, applies the same table to what its
run raises.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import NoReturn


class Exit(IntEnum):
    OK = 0
    UNEXPECTED = 1
    MISTAKE = 2
    JOBS_FAILED = 3
    DISK_FULL = 4

    @staticmethod
    def signal(signum: int) -> int:
        return 128 + int(signum)


class UserError(Exception):
    """Bad input (config value, file, data): the message says what and how to fix it."""

    exit_code: int = Exit.MISTAKE


def exit_code_of(e: BaseException) -> int:
    """The exit status for what ended a command (see the table above)."""
    if isinstance(e, KeyboardInterrupt):
        return Exit.signal(signal.SIGINT)
    code = getattr(e, "exit_code", None)
    if isinstance(code, int):  # UserError and its kinds (a full disk: 4), a run stopped by a signal (128 + N)
        return code
    return Exit.UNEXPECTED


def fail(e: UserError) -> NoReturn:
    """Print a user's mistake as one paragraph and exit with its code."""
    print(f"error: {e}", file=sys.stderr)
    sys.exit(exit_code_of(e))


def run_console_command(body: Callable[[], None], interrupted: str) -> None:
    """Run a command's body under the table: a UserError is one paragraph; Ctrl-C prints ``interrupted``;
    a reader that left the pipe (``--help | head``) ends the command quietly; anything else is a
    traceback and exit 1 (Python's own)."""
    try:
        body()
    except UserError as e:
        fail(e)
    except KeyboardInterrupt as e:
        print(interrupted, file=sys.stderr)
        sys.exit(exit_code_of(e))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error while flushing
        sys.exit(Exit.UNEXPECTED)


def oom_message(device: object, batch_size: int, precision: str, accumulate: int) -> str:
    """What to do about an out-of-memory error in training."""
    return (
        f"out of memory on {device} at data.batch_size={batch_size} (precision {precision}). "
        f"Lower data.batch_size (e.g. {max(1, batch_size // 2)}) and keep the effective batch with "
        f"trainer.accumulate={2 * accumulate}, or use trainer.precision=bf16 (or fp16) to halve "
        "activation memory."
    )

"""Console entry points (`train`, `predict`, `evaluate`, `export-model`, `check-data`, `python -m trainer`).

Each runs its command's ``main()`` and then exits the way Python's own shutdown does, minus its last
step: tearing down every imported module one by one, which for torch, torchvision and torchmetrics
costs 2-3 s on a small CPU after the work is done. What shutdown is for still happens: atexit
handlers run (logging flushes and closes its files, multiprocessing stops its children, temporary
folders are removed) and the standard streams are flushed. A command that ends in an uncaught
exception, or leaves threads running (a sweep's worker pool), exits through Python's usual path.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits 1
    return 1


def exit_after(main: Callable[[], None]) -> NoReturn:
    """Run ``main``; then shut down without the module teardown and exit with its status. While a
    thread other than the main one is still alive (a sweep's worker pool), Python's own shutdown runs
    instead: it knows how to stop what such threads serve."""
    try:
        main()
        code = 0
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt as e:  # Ctrl-C before the command's own handler was in place (its imports)
        from trainer.errors import exit_code_of

        print("interrupted.", file=sys.stderr)
        code = exit_code_of(e)
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say
            pass
    os._exit(code)


def _command(module: str) -> Callable[[], None]:
    def main() -> None:  # imported inside exit_after: a Ctrl-C during the imports is answered too
        import importlib

        importlib.import_module(module).main()

    return main


def train() -> NoReturn:
    exit_after(_command("trainer.cli.train"))


def predict() -> NoReturn:
    exit_after(_command("trainer.use.predict"))


def evaluate() -> NoReturn:
    exit_after(_command("trainer.use.evaluate"))


def export() -> NoReturn:
    exit_after(_command("trainer.use.export"))


def check_data() -> NoReturn:
    exit_after(_command("trainer.use.check_data"))


def write_shards() -> NoReturn:
    exit_after(_command("trainer.use.write_shards"))

"""What the commands that use a trained model share (`predict`, `evaluate`, `export-model`): ``key=value``
arguments with ``--help`` and one-paragraph errors, and ``allow_targets`` read from the command line
only. The model itself comes from ``trainer.models.trained``.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from typing import Any

from trainer.errors import UserError, run_console_command


def parse_args(argv: list[str], keys: dict[str, Any], required: tuple[str, ...], usage: str) -> dict[str, Any]:
    """``key=value`` arguments into a dict over ``keys`` (their defaults); ``--help`` prints ``usage``."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage.strip())
        sys.exit(0)
    values = dict(keys)
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            raise UserError(f"{arg!r} is not a key=value argument. Keys: {', '.join(keys)}.")
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise UserError(f"{key}: there is no such key.{hint} Keys: {', '.join(keys)}.")
        values[key] = value
    missing = [k for k in required if not values.get(k)]
    if missing:
        raise UserError(f"missing {', '.join(f'{k}=...' for k in missing)}. See --help.")
    return values


def run_command(body: Callable[[], None]) -> None:
    """A command under the exit-code table (trainer.errors); Ctrl-C leaves no half-written file. Its
    warnings (files left out, unreadable images) go to stderr, one line each."""
    import logging

    package = logging.getLogger("trainer")
    if not package.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        package.addHandler(handler)
    run_console_command(body, "interrupted: no file was left half-written (each is written whole or not at all).")


def trusted(value: str | None) -> tuple[str, ...]:
    """``allow_targets=a.,b.`` (or ``[a.,b.]``) as a tuple of prefixes."""
    return tuple(p.strip() for p in str(value or "").strip("[]").split(",") if p.strip())

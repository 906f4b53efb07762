"""What the commands that use a trained model share (`predict`, `export`): ``key=value`` arguments
with ``--help`` and one-paragraph errors, and a model rebuilt from a checkpoint, running no code.

The checkpoint's own config rebuilds the architecture (its ``_target_`` entries checked first, with
only the ``allow_targets`` given on this command line trusted), its weights fill it, and its input
spec gives the preprocessing the model was trained with.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import UserError


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
    """A command's exit codes: 0, or 2 with one paragraph for a user's mistake."""
    try:
        body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # files are written whole or not at all: nothing half-written is left
        print("interrupted: no file was left half-written (each is written whole or not at all).", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `predict --help | head`: the reader left
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def trusted(value: str | None) -> tuple[str, ...]:
    """``allow_targets=a.,b.`` (or ``[a.,b.]``) as a tuple of prefixes."""
    return tuple(p.strip() for p in str(value or "").strip("[]").split(",") if p.strip())


@dataclass
class Trained:
    """A model rebuilt from a checkpoint, with what using it needs."""

    model: Any
    classes: list[str]
    task: str
    input_spec: dict[str, Any]
    config: Any
    checkpoint: Path
    state: dict[str, Any]


def load_trained(value: str, allow: tuple[str, ...] = ()) -> Trained:
    """The trained model of a checkpoint or run folder, on the CPU, in eval mode."""
    from hydra.utils import instantiate

    from trainer.checkpoint import checkpoint_of, inference_weights, load_checkpoint
    from trainer.targets import check_targets
    from trainer.untrusted import load_config

    path = checkpoint_of(value, key="checkpoint", names=("best.pt", "last.pt"))
    state = load_checkpoint(path)
    cfg = load_config(state["config"], f"the config stored in {path}")
    check_targets(cfg, extra=allow, where=f"config stored in {path}")
    cfg.allow_targets = list(allow)  # a list stored in the run is not trusted: only the one given now
    task = str(state.get("task") or cfg.data.get("task") or "multiclass")
    classes = [str(c) for c in state["classes"]]
    cfg.model.pretrained = False  # the checkpoint brings every weight: nothing is downloaded or read
    cfg.model.weights = None
    built = instantiate(cfg.model)(num_classes=len(classes), task=task)
    try:
        built.model.load_state_dict(inference_weights(state))
    except RuntimeError as e:
        raise UserError(f"{path}: its weights do not fit the model its config describes ({str(e)[:200]}).") from None
    built.model.eval()
    spec = dict(state["input_spec"])
    return Trained(built.model, classes, task, spec, cfg, path, state)

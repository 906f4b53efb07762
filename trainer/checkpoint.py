"""Atomic checkpoint writes, safe loads, and finding the run to resume."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.errors import UserError


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read one of our checkpoints with ``weights_only=True`` (no code runs); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist. Give resume=auto, a run folder, "
                        "or the path of a .pt file under a run's checkpoints/ folder.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"checkpoint {str(path)!r} cannot be read: it is truncated, corrupt or not a "
                        f"checkpoint ({type(e).__name__}: {first}). Resume from another checkpoint "
                        "(best.pt, or an earlier run) instead.") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise UserError(f"checkpoint {str(path)!r} is not a training checkpoint of this tool "
                        "(no model/epoch entries). To start from its weights, use model.weights=PATH.")
    return state


def checkpoint_of(target: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder (-> its checkpoints/last.pt)."""
    p = Path(target).expanduser()
    if p.is_dir():
        for candidate in (p / "checkpoints" / "last.pt", p / "last.pt"):
            if candidate.is_file():
                return candidate
        raise UserError(f"resume={str(target)!r}: this folder holds no checkpoints/last.pt.")
    if not p.is_file():
        raise UserError(f"resume={str(target)!r}: no such checkpoint file or run folder.")
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
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


SAFE_TARGET_PREFIXES = ("torch.", "torchvision.", "timm.", "trainer.")


def check_targets(cfg: Any, allowed: tuple[str, ...] = SAFE_TARGET_PREFIXES, where: str = "config") -> None:
    """Refuse a config from elsewhere (e.g. inside a checkpoint) whose ``_target_`` is not allow-listed."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    def walk(node: Any, path: str) -> None:
        if isinstance(node, (DictConfig, dict)):
            items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
            for k, v in items:
                if k == "_target_" and not str(v).startswith(allowed):
                    raise UserError(f"{where}: {path}_target_={v!r} is not allowed to be built (allowed "
                                    f"prefixes: {', '.join(allowed)}). Only load configs you trust.")
                walk(v, f"{path}{k}.")
        elif isinstance(node, (ListConfig, list)):
            for i, v in enumerate(node):
                walk(v, f"{path}{i}.")

    walk(cfg if not isinstance(cfg, str) else OmegaConf.create(cfg), "")

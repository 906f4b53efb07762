"""This process's place in a torchrun launch, from the environment; ``train trainer.devices=N`` starting
torchrun; the run folder every rank shares. Imports no torch (the `train` command reads it before torch)."""

from __future__ import annotations

import os
import sys

from trainer.config.overrides import key_of
from trainer.errors import UserError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def shutdown() -> None:
    """Leave the process group, if this process joined one (torch is not imported for that)."""
    if is_distributed() and "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def override_value(argv: list[str], key: str) -> str | None:
    for a in argv:
        if not a.startswith("-") and "=" in a and key_of(a) == key:
            return a.split("=", 1)[1].strip().strip("'\"")
    return None


def launch_if_asked(argv: list[str]) -> None:
    """``train trainer.devices=N`` (N > 1) outside torchrun: start torchrun with N processes on this node."""
    devices = override_value(argv, "trainer.devices")
    if devices in (None, "1", "auto") or "WORLD_SIZE" in os.environ:
        return
    if any(a in ("-m", "--multirun") for a in argv):
        raise UserError(
            f"trainer.devices={devices} starts torchrun for one run, and does not combine with -m: "
            "sweep with hydra/launcher=parallel (one GPU per job), or start each run with "
            "`train trainer.devices=N ...`."
        )
    try:
        n = int(devices)
    except ValueError:
        raise UserError(
            f"trainer.devices={devices!r}: use an integer (processes on this node), e.g. trainer.devices=8."
        ) from None
    if n < 1:
        raise UserError(f"trainer.devices={n}: use 1 or more.")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "trainer",
        *argv,
    ]
    print(
        f"starting {n} processes: torchrun --standalone --nproc_per_node={n} -m trainer {' '.join(argv)}",
        file=sys.stderr,
    )
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()

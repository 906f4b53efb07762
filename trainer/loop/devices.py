"""``trainer.device``: the device a name means here (a module of its own, so the commands that only
run a model need not import the whole loop to find it)."""

from __future__ import annotations

import torch

from trainer.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but no CUDA device is visible: use trainer.device=auto or cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("trainer.device=mps but MPS is not available: use trainer.device=auto or cpu.")
    return torch.device(name)

"""Where and how a model runs: ``trainer.device`` (the device a name means here), ``trainer.precision``
(bf16 where the hardware has it), ``trainer.channels_last`` and ``trainer.compile``. A module of its
own, so the commands that only run a model need not import the whole loop to find them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UserError
from trainer.models.backbones import is_convnet

log = logging.getLogger("trainer")


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


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 on CUDA that has it, and on CPUs with native bf16 instructions; else fp32.

    Without native bf16 (AVX2-only x86) autocast emulates it and is slower than fp32, so it is never
    guessed from the architecture: the instructions are read from the CPU's flags."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        found = cpu_bf16_instructions()
        if found:
            log.debug("precision auto: bf16 on this CPU (native bf16 instructions: %s)", ", ".join(found))
            return "bf16"
    return "fp32"


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX / AVX512-BF16; ARMv8.6 BF16 ("Features: ... bf16")


def cpu_bf16_instructions(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The native bf16 instruction sets this CPU lists (Linux /proc/cpuinfo flags); [] when none or unknown."""
    flags = set((cpuinfo_value(("flags", "features"), cpuinfo) or "").split())
    return [f for f in CPU_BF16_FLAGS if f in flags]


def cpuinfo_value(keys: tuple[str, ...], cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The first value /proc/cpuinfo gives for one of ``keys`` (e.g. ``model name``); None when none or unknown."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in keys:
            return value.strip()
    return None


def resolve_channels_last(value: Any, device: torch.device, model: torch.nn.Module) -> bool:
    """auto: channels_last on CUDA for convolutional nets (measured faster there, docs/BENCHMARKS.md)."""
    return device.type == "cuda" and is_convnet(model) if value == "auto" else bool(value)


def resolve_compile(value: Any) -> str | None:
    """trainer.compile: false | true (inductor) | a backend name."""
    if value in (False, None, "false"):
        return None
    return value if isinstance(value, str) and value != "true" else "inductor"

"""How a model trains fastest on a CPU: ``trainer.precision=auto`` and ``trainer.channels_last=auto``.

On a GPU fixed rules hold (bf16 where supported, channels_last for conv nets; devices.py). A CPU is
less predictable. Measured on 2 cores of an AMD EPYC with native bf16 (docs/BENCHMARKS.md), one
training step of EfficientNet-Lite0 takes 0.174 s in fp32 channels_last and 0.367 s in bf16 NCHW,
while ResNet-18 and ConvNeXt are fastest in bf16 channels_last. So on a CPU ``auto`` measures: a
forward, backward and optimizer step of the run's own model, at its batch size and input size, in
each variant this CPU can run (bf16 only with native bf16 instructions, channels_last only for conv
nets; a setting the user fixed is not varied), and trains in the fastest. The answer is remembered per
model, input, batch, CPU, thread count and torch version (``variants.json`` in ``$TRAINER_CACHE``,
else ``~/.cache/transfer-trainer``), so the next run on this machine starts at once.

A run too short for the measurement to pay for itself (under ``PROBE_MIN_STEPS`` optimizer steps, and
nothing remembered) takes the rule those measurements give instead: channels_last for conv nets, and bf16 (where
native) except for small nets of depthwise convolutions (under ``BF16_MIN_PARAMS`` parameters).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.loop.devices import cpu_bf16_instructions, cpuinfo_value
from trainer.loop.steps import autocast_for
from trainer.loop.trial import trial
from trainer.models.backbones import is_convnet

log = logging.getLogger("trainer")

PROBE_MIN_STEPS = 400  # the probe takes about 16 steps: at most 4% of a run this long
BF16_MIN_PARAMS = 10_000_000  # measured: a depthwise net below it loses more to bf16's casts than it gains
TIMED_STEPS = 3  # per variant, after one warm-up step; the median is kept
CACHE_LIMIT = 1 << 20  # variants.json is read only up to 1 MiB (a file anyone could have written)


@dataclass(frozen=True)
class Variant:
    precision: str  # fp32 | bf16
    channels_last: bool

    def __str__(self) -> str:
        return f"{self.precision} {'channels_last' if self.channels_last else 'NCHW'}"


def candidates(precision: str, channels_last: Any, model: torch.nn.Module, bf16: bool | None = None) -> list[Variant]:
    """The variants worth trying: each setting left at ``auto`` varies over what this CPU and model can use
    (``bf16``: whether the CPU has native bf16; read from it when None)."""
    native = bool(cpu_bf16_instructions()) if bf16 is None else bf16
    precisions = (["fp32", "bf16"] if native else ["fp32"]) if precision == "auto" else [precision]
    layouts = ([False, True] if is_convnet(model) else [False]) if channels_last == "auto" else [bool(channels_last)]
    return [Variant(p, c) for p in precisions for c in layouts]


def rule(options: list[Variant], model: torch.nn.Module) -> Variant:
    """The choice without a measurement: channels_last where offered (never slower on a CPU in our
    measurements), and bf16 except for small nets built on depthwise convolutions (EfficientNet,
    MobileNet under ``BF16_MIN_PARAMS`` parameters), whose cheap convolutions lose more to the casts than
    bf16's math saves."""
    depthwise = any(isinstance(m, torch.nn.Conv2d) and 1 < m.groups == m.in_channels for m in model.modules())
    small = sum(p.numel() for p in model.parameters()) < BF16_MIN_PARAMS
    bf16 = not (depthwise and small)
    return max(options, key=lambda v: (v.channels_last, (v.precision == "bf16") == bf16))


def time_step(
    model: torch.nn.Module, loss_fn: Any, batch: Callable[[], tuple[torch.Tensor, Any]], variant: Variant
) -> float:
    """Seconds of one training step (forward, backward, an optimizer step) of ``model`` on ``batch()`` in
    ``variant``: the median of ``TIMED_STEPS`` after a warm-up. Everything it changes is put back, the
    random streams drawing the batch included."""
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
    autocast = autocast_for("cpu", variant.precision)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)
    times = []
    with trial(model):
        x, y = batch()
        model.train()
        model.to(memory_format=memory_format)
        x = x.contiguous(memory_format=memory_format)
        for i in range(TIMED_STEPS + 1):
            t0 = time.perf_counter()
            with autocast():
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - t0)
        model.to(memory_format=torch.contiguous_format)
    return statistics.median(times)


def choose(
    options: list[Variant],
    model: torch.nn.Module,
    key: str,
    planned_steps: int | None,
    measure: Callable[[Variant], float],
) -> tuple[Variant, str]:
    """The variant to train in, and why (for the log). ``key``: what the answer is remembered under;
    ``planned_steps``: the run's optimizer steps (None: unknown, e.g. a time budget's);
    ``measure``: a variant's seconds per step."""
    if len(options) == 1:
        return options[0], "the only variant the settings and this CPU leave"
    known = read_cache().get(key)
    if isinstance(known, dict) and known.get("variant") in {str(v) for v in options}:
        chosen = next(v for v in options if str(v) == known["variant"])
        return chosen, f"measured on this machine before ({_shown(known.get('seconds', {}))})"
    if planned_steps is not None and planned_steps < PROBE_MIN_STEPS:
        return rule(options, model), (
            f"the rule for a short run ({planned_steps} steps; from {PROBE_MIN_STEPS} the variants are measured)"
        )
    seconds = {str(v): measure(v) for v in options}
    chosen = min(options, key=lambda v: seconds[str(v)])
    write_cache(key, {"variant": str(chosen), "seconds": {k: round(s, 4) for k, s in seconds.items()}})
    return chosen, f"measured now ({_shown(seconds)}), remembered in {cache_path()}"


def _shown(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {s:.3f} s/step" for name, s in sorted(seconds.items(), key=lambda kv: kv[1]))


def cache_key(model_name: str, size: int, batch: int, task: str) -> str:
    """What a measurement holds for: the model and its input, and this machine as it runs it."""
    cpu = cpuinfo_value(("model name",)) or platform.processor() or platform.machine()
    return (
        f"{model_name}|{size}px|batch {batch}|{task}|{cpu}|{torch.get_num_threads()} threads|torch {torch.__version__}"
    )


def cache_path() -> Path:
    base = os.environ.get("TRAINER_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "transfer-trainer") / "variants.json"


def read_cache() -> dict[str, Any]:
    """The remembered answers; {} when there are none or the file is not ours to trust (too large, not JSON)."""
    path = cache_path()
    try:
        with open(path, "rb") as f:
            data = f.read(CACHE_LIMIT + 1)
        found = json.loads(data) if len(data) <= CACHE_LIMIT else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_cache(key: str, value: dict[str, Any]) -> None:
    """Remember one answer (written whole, then moved into place); a cache that cannot be written is skipped."""
    path = cache_path()
    known = read_cache()
    known[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        log.debug("variants cache not written (%s)", e)

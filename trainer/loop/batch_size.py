"""``data.batch_size=auto`` and ``trainer.effective_batch``: the batch a run trains with, chosen by measurement.

On CUDA: the largest batch whose forward and backward fit in the device's memory with headroom (the
optimizer's state added), found by doubling and then bisecting. On a CPU memory is rarely the limit,
the pace is: the smallest batch within 10% of the best images per second. When a wanted effective batch
(``trainer.effective_batch``) is larger than what fits, ``trainer.accumulate`` is raised to keep it.
Under torchrun every rank probes and all take the smallest answer."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import default_collate

from trainer.errors import UserError
from trainer.loop.trial import trial

log = logging.getLogger("trainer")

CUDA_CAP = 1024  # no probe beyond this (large batches on small data need another lr anyway)
CPU_CANDIDATES = (8, 16, 32, 64, 128)
HEADROOM = 0.15  # of the device's memory left free: the allocator's fragmentation, cudnn workspaces, data
CPU_WITHIN = 0.9  # the smallest batch reaching this share of the best images per second


@dataclass(frozen=True)
class BatchChoice:
    batch_size: int  # per process, per micro-batch
    accumulate: int
    why: str


def largest_fitting(fits: Callable[[int], bool], cap: int, start: int = 8) -> int:
    """The largest batch ``b <= cap`` with ``fits(b)``, for a ``fits`` that holds up to some size and not
    beyond: doubling from ``start``, then bisecting between the last size that fit and the first that did not."""
    cap = max(1, cap)
    good, bad = 0, None
    size = min(start, cap)
    while True:
        if fits(size):
            good = size
            if size == cap:
                break
            size = min(2 * size, cap)
        else:
            bad = size
            break
    if bad is not None:
        while bad - good > 1:
            mid = (good + bad) // 2
            if fits(mid):
                good = mid
            else:
                bad = mid
    if good == 0:
        raise UserError(
            "data.batch_size=auto: not even one image fits in the device's memory for a training step. Use a "
            "smaller model or data.image_size, precision=bf16, or another device."
        )
    return good


def fastest_small_batch(seconds_per_image: Callable[[int], float], candidates: tuple[int, ...]) -> tuple[int, str]:
    """The smallest candidate whose pace (images per second) is within ``CPU_WITHIN`` of the best one's:
    more optimizer steps per epoch for nearly the same time."""
    pace = {b: 1.0 / max(seconds_per_image(b), 1e-12) for b in candidates}
    best = max(pace.values())
    size = min(b for b in candidates if pace[b] >= CPU_WITHIN * best)
    table = ", ".join(f"{b}: {pace[b]:.0f} img/s" for b in candidates)
    return size, f"the smallest batch within {1 - CPU_WITHIN:.0%} of the best pace ({table})"


def split_effective(wanted: int, largest: int) -> tuple[int, int]:
    """(batch, accumulate) with batch <= largest and batch x accumulate == wanted where a divisor allows
    (else the nearest product above it): the fewest micro-batches that keep the wanted effective batch."""
    if wanted <= largest:
        return wanted, 1
    fewest = math.ceil(wanted / largest)
    for acc in range(fewest, 2 * fewest + 1):
        if wanted % acc == 0:
            return wanted // acc, acc
    return math.ceil(wanted / fewest), fewest


def choose(
    largest: int, why: str, wanted: int | None, accumulate: int, world_size: int = 1, probed: bool = True
) -> BatchChoice:
    """The batch and accumulation from the largest size that fits per process (``probed``; else the batch
    the user gave, kept) and a wanted effective batch over all processes (None: the given accumulation)."""
    if wanted is None:
        return BatchChoice(largest, accumulate, why)
    per_process = max(1, math.ceil(wanted / world_size))
    if probed:
        batch, acc = split_effective(per_process, largest)
    else:
        batch, acc = largest, max(1, math.ceil(per_process / largest))
    effective = batch * acc * world_size
    note = f"effective batch {effective} = {batch} x accumulate {acc}" + (
        f" x {world_size} processes" if world_size > 1 else ""
    )
    if effective != wanted:
        note += f" (trainer.effective_batch={wanted} has no exact split)"
    return BatchChoice(batch, acc, f"{why}; {note}")


# ---------------------------------------------------------------------- the probe's training step


class ProbeStep:
    """Forward and backward of the model at batch ``b``, from copies of one training sample (the task's
    real targets and input size), at the run's precision and memory format. What it changes is put
    back: gradients dropped, BatchNorm statistics and the random streams restored."""

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Any,
        sample: tuple[Any, Any],
        device: torch.device,
        autocast: Callable[[], Any],
        memory_format: torch.memory_format,
    ) -> None:
        self.model, self.loss_fn, self.sample, self.device = model, loss_fn, sample, device
        self.autocast, self.memory_format = autocast, memory_format

    def __call__(self, batch: int) -> None:
        x, y = default_collate([self.sample] * batch)
        x = x.to(self.device).float().contiguous(memory_format=self.memory_format)
        y = y.to(self.device)
        try:
            with self.autocast():
                loss = self.loss_fn(self.model(x), y)
            loss.backward()
        finally:
            del x, y
            self.model.zero_grad(set_to_none=True)

    def measure(self, probe: Callable[[], Any]) -> Any:
        """``probe()`` in train mode, its passes tried and put back (``loop/trial.py``)."""
        with trial(self.model, weights=False):
            self.model.train()
            return probe()


def first_sample(dataset: Any, tries: int = 50) -> tuple[Any, Any]:
    """The first of the dataset's samples that decodes (a bad image is skipped, as in training)."""
    for index in range(min(len(dataset), tries)):
        item = dataset[index]
        if isinstance(item, tuple) and isinstance(item[0], torch.Tensor):
            return item
    raise UserError(f"data.batch_size=auto: none of the first {tries} training images could be read to probe with.")


def optimizer_state_bytes(model: torch.nn.Module) -> int:
    """Two fp32 tensors per trainable parameter (Adam's moments; SGD with momentum needs one)."""
    return 2 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)


def cuda_fits(step: Callable[[int], None], device: torch.device, limit: int, extra: int) -> Callable[[int], bool]:
    """``fits(b)``: the step at ``b`` ran without running out of memory and its peak plus ``extra`` bytes
    stayed under ``limit``."""

    def fits(batch: int) -> bool:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            step(batch)
            torch.cuda.synchronize(device)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return False
        return torch.cuda.max_memory_allocated(device) + extra <= limit

    return fits


def cuda_limit(device: torch.device) -> int:
    """The bytes a run may use on ``device``: what is free plus what this process holds, less the headroom."""
    free, _total = torch.cuda.mem_get_info(device)
    return int((free + torch.cuda.memory_reserved(device)) * (1 - HEADROOM))


def timed(step: Callable[[int], None], repeats: int = 2) -> Callable[[int], float]:
    """Seconds per image of ``step`` at ``b`` (after one warm-up step), the best of ``repeats``."""

    def seconds_per_image(batch: int) -> float:
        step(batch)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            step(batch)
            best = min(best, time.perf_counter() - start)
        return best / batch

    return seconds_per_image


def probe_largest(step: ProbeStep, device: torch.device, cap: int) -> tuple[int, str]:
    """The device's answer: on CUDA the largest batch that fits, elsewhere the measured pace's choice."""
    if device.type == "cuda":
        limit, extra = cuda_limit(device), optimizer_state_bytes(step.model)
        size = step.measure(lambda: largest_fitting(cuda_fits(step, device, limit, extra), min(cap, CUDA_CAP)))
        return (
            size,
            f"the largest batch whose training step fits in {limit / 2**30:.1f} GiB of {device} ({HEADROOM:.0%} kept free)",
        )
    candidates = tuple(b for b in CPU_CANDIDATES if b <= cap) or (max(1, cap),)
    return step.measure(lambda: fastest_small_batch(timed(step), candidates))

"""How one batch is computed, chosen when a stage starts instead of branching inside the loop.

- a forward: the model (plain or DDP), compiled, a linear probe (frozen backbone under no_grad,
  the head on its features), or a probe on cached features;
- a step: plain (autocast, scaled backward, accumulation, clipping), skip-nonfinite, or a
  closure step (L-BFGS re-evaluates the loss itself);
- the inputs: the loaders' images on the device, or the cached features.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from trainer.data.device import DeviceBatches
from trainer.data.loaders import CachedFeatures, Loaders
from trainer.errors import UserError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- forwards


class Forward:
    """Training forward through ``module`` (the model or its DDP wrapper); evaluation through the model."""

    def __init__(self, model: torch.nn.Module, module: torch.nn.Module) -> None:
        self.model, self.module = model, module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class CompiledForward(Forward):
    """``torch.compile`` of the training forward, compiled on its first batch."""

    def __init__(self, model: torch.nn.Module, module: torch.nn.Module, backend: str) -> None:
        super().__init__(model, module)
        self.backend = backend
        self.compiled: Any = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            return self.compiled(x)
        t0 = time.perf_counter()
        self.compiled = torch.compile(self.module, backend=self.backend)
        out = self.compiled(x)
        log.info(
            "trainer.compile: compiled the training forward (%s) in %.1fs (first batch included)",
            self.backend,
            time.perf_counter() - t0,
        )
        return out


class ProbeForward(Forward):
    """Linear probe: the frozen backbone runs in eval mode under no_grad; the head trains on what it
    hands the head (captured by a hook on the head's input)."""

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module, autocast: Callable[[], Any]) -> None:
        super().__init__(model, model)
        self.head, self.autocast = head, autocast

    @torch.no_grad()
    def features(self, x: torch.Tensor, autocast: Callable[[], Any] | None = None) -> torch.Tensor:
        """What the backbone hands the head, in the training precision (or under ``autocast``)."""
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            with (autocast or self.autocast)():
                self.model(x)
        finally:
            hook.remove()
        return captured[-1].float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CachedProbeForward(ProbeForward):
    """Linear probe on features computed once: the inputs are features, train and eval alike."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


# ---------------------------------------------------------------------- inputs


class ImageInputs:
    """The loaders' batches on the training device, images normalized there (from uint8)."""

    def __init__(self, loaders: Loaders, device: torch.device, memory_format: torch.memory_format) -> None:
        self.loaders, self.device, self.memory_format = loaders, device, memory_format

    def on_device(self, batches: Any) -> DeviceBatches:
        spec = self.loaders.input_spec
        return DeviceBatches(batches, self.device, spec["mean"], spec["std"], self.memory_format)

    def train(self, epoch: int, start_batch: int) -> DeviceBatches:
        self.loaders.sampler.set_epoch(epoch, start=start_batch * self.loaders.batch_size)
        return self.on_device(self.loaders.train)

    def val(self) -> DeviceBatches:
        return self.on_device(self.loaders.val)


class CachedInputs(ImageInputs):
    """Backbone features of every image, computed once with augmentation off (a cached linear probe); the
    val images' in the val pass's precision (``val_autocast``)."""

    def __init__(
        self, loaders: Loaders, device: torch.device, probe: ProbeForward, val_autocast: Callable[[], Any]
    ) -> None:
        super().__init__(loaders, device, torch.preserve_format)
        self.probe, self.val_autocast = probe, val_autocast
        self.cache: dict[str, torch.Tensor] = {}

    def _fill(self) -> None:
        t0 = time.perf_counter()
        self.probe.model.eval()
        for split, loader in (("train", self.loaders.train_eval), ("val", self.loaders.val)):
            feats = []
            for x, _, bad in self.on_device(loader):
                if bad:
                    raise UserError(
                        f"finetune.cache_features=true needs every image readable; broken: {bad[0]} "
                        "(and maybe more: data.verify=true lists them). Remove them or set "
                        "finetune.cache_features=false."
                    )
                feats.append(self.probe.features(x, self.val_autocast if split == "val" else None))
            self.cache[split] = torch.cat(feats)
        log.info(
            "cached backbone features (augmentation off): train %s, val %s in %.1fs",
            tuple(self.cache["train"].shape),
            tuple(self.cache["val"].shape),
            time.perf_counter() - t0,
        )

    def train(self, epoch: int, start_batch: int) -> DeviceBatches:
        if not self.cache:
            self._fill()  # counted in the first epoch's time
        self.loaders.sampler.set_epoch(epoch, start=start_batch * self.loaders.batch_size)
        ds = CachedFeatures(self.cache["train"], self.loaders.train.dataset.images)
        loader = DataLoader(
            ds, batch_size=self.loaders.batch_size, sampler=self.loaders.sampler, drop_last=self.loaders.train.drop_last
        )
        return self.on_device(loader)

    def val(self) -> DeviceBatches:
        images = self.loaders.val.dataset.images
        targets = [images.target(i) for i in range(len(images))]
        size = self.loaders.val.batch_size or 1
        feats = self.cache["val"]
        batches = [(feats[i : i + size], default_collate(targets[i : i + size])) for i in range(0, len(targets), size)]
        return self.on_device(batches)


def val_precision(precision: str, eval_precision: str) -> str:
    """The val pass's precision: fp32 (trainer.eval_precision=fp32), or the training one (``same``)."""
    return precision if eval_precision == "same" else "fp32"


def autocast_for(device_type: str, precision: str) -> Callable[[], Any]:
    """The autocast context of ``precision`` (bf16, fp16; fp32: none) on ``device_type``, as a factory."""
    import contextlib

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return (lambda: torch.autocast(device_type, dtype=dtype)) if dtype else contextlib.nullcontext


# ---------------------------------------------------------------------- steps


class Step:
    """One micro-batch forward and backward (``backward``) and, every ``accumulate`` micro-batches,
    the optimizer update (``update``): unscale and clip, step, advance the schedule."""

    def __init__(
        self,
        *,
        forward: Forward,
        loss_fn: Any,
        optimizer: Any,
        schedule: Any,
        scaler: Any,
        autocast: Callable[[], Any],
        accumulate: int,
        clip_grad_norm: float | None,
    ) -> None:
        self.forward, self.loss_fn, self.optimizer, self.schedule = forward, loss_fn, optimizer, schedule
        self.scaler, self.autocast, self.accumulate, self.clip = scaler, autocast, accumulate, clip_grad_norm
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.loss_fn(self.forward(x), y)

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The micro-batch's loss (gradients accumulated), or None when the batch was skipped."""
        loss = self.loss(x, y)
        self.scaler.scale(loss / self.accumulate).backward()
        return loss

    def update(self) -> None:
        opt, scaler = self.optimizer, self.scaler
        if self.clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        scale = scaler.get_scale() if scaler.is_enabled() else None  # fp16 only: a sync
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        # fp16: a step the scaler skipped (inf/NaN gradients) does not advance the schedule
        if scale is None or scaler.get_scale() >= scale:
            self.schedule.after_step()


class SkipNonfiniteStep(Step):
    """trainer.nonfinite=skip: a batch whose loss is NaN or inf is skipped (a host sync per batch)."""

    skipped = 0

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        loss = self.loss(x, y)
        if not bool(torch.isfinite(loss)):
            self.skipped += 1
            log.warning("non-finite loss: batch skipped (%d so far)", self.skipped)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.scaler.scale(loss / self.accumulate).backward()
        return loss


class ClosureStep(Step):
    """L-BFGS: the optimizer calls forward and backward itself, as often as its line search needs."""

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(x, y)
            loss.backward()
            return loss

        return self.optimizer.step(closure)

    def update(self) -> None:
        self.schedule.after_step()


# ---------------------------------------------------------------------- the train loss


class LossMeter:
    """Running sums of the train loss, kept on the device: reading them is a host-device sync,
    done every trainer.log_every steps (``flush``) and at a save (``total``)."""

    def __init__(self, partial: tuple[float, int], device: torch.device) -> None:
        self.sum, self.count = torch.tensor(partial[0], device=device), partial[1]
        self.window, self.window_count = torch.zeros((), device=device), 0

    def add(self, loss: torch.Tensor) -> None:
        self.window += loss.detach()
        self.window_count += 1

    def _merge(self) -> None:
        self.sum += self.window
        self.count += self.window_count
        self.window.zero_()
        self.window_count = 0

    def flush(self) -> float:
        """The mean loss since the last flush."""
        mean = (self.window / max(1, self.window_count)).item()
        self._merge()
        return mean

    def total(self) -> tuple[float, int]:
        """(sum, count) over the epoch so far, read to the host."""
        total, count = self.totals().tolist()
        return total, int(count)

    def totals(self) -> torch.Tensor:
        """(sum, count) over the epoch as one tensor on the device, to sum over ranks without a sync."""
        self._merge()
        return torch.stack([self.sum.float(), torch.tensor(float(self.count), device=self.sum.device)])

"""Batches on the training device: copied as uint8 and normalized there, JPEGs decoded there."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from trainer.data.images import decode_jpegs
from trainer.data.loaders import MicroBatches
from trainer.data.resample import RawBatch, RawJpeg, apply_geometry, resample_batch, small_tensor

log = logging.getLogger(__name__)


class DeviceBatches:
    """Batches of a loader on the training device: uint8 images copied (non_blocking from pinned
    memory) and turned into normalized floats there. On CUDA the next batch is copied and
    normalized on a side stream while the current one trains; elsewhere it is done in line.

    Yields ``(x, y, bad)`` like the loader; ``x`` float32 ``(N, 3, H, W)`` in ``memory_format``.
    Anything that is not a uint8 image batch (cached features) is only moved.
    """

    def __init__(
        self,
        loader: Any,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        memory_format: torch.memory_format = torch.preserve_format,
    ) -> None:
        self.loader, self.device, self.memory_format = loader, device, memory_format
        # x / 255 - mean) / std  ==  x * scale + shift, one fused op
        std_t = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1).to(device)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        # data.decode=device: a GPU resamples a batch fastest as a few dense matrix products
        # (resample_batch); a CPU, image by image with v2's uint8 kernels (as the workers would)
        self.batched_resample = device.type == "cuda"

    def __len__(self) -> int:
        return len(self.loader)

    def _move(self, batch: Any) -> Any:
        if isinstance(batch, MicroBatches) and batch and isinstance(batch[0], RawBatch):
            batch = RawBatch(
                [it for b in batch for it in b.items],
                torch.cat([b.targets for b in batch]),
                [name for b in batch for name in b.bad],
            )
        if isinstance(batch, RawBatch):
            x, y, rest = self._decode(batch)
        elif isinstance(batch, MicroBatches):
            x, y, rest = self._join([self._to_device(piece) for piece in batch])
        else:
            x, y, rest = self._to_device(batch)
        if x.dtype == torch.uint8 and x.ndim == 4:
            x = torch.addcmul(self.shift, x.float(), self.scale).contiguous(memory_format=self.memory_format)
        return (x, y, *rest)

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, Any, tuple[Any, ...]]:
        return (
            batch[0].to(self.device, non_blocking=True),
            batch[1].to(self.device, non_blocking=True),
            tuple(batch[2:]),
        )

    def _decode(self, batch: RawBatch) -> tuple[torch.Tensor, Any, tuple[Any, ...]]:
        """Decode a batch's JPEGs on the device in one call, resample each as its worker drew, stack."""
        raws = [k for k, it in enumerate(batch.items) if isinstance(it, RawJpeg)]
        try:
            decoded: list[torch.Tensor | None] = list(decode_jpegs([batch.items[k].data for k in raws], self.device))
        except Exception:  # one bad file fails the whole call: decode one by one to name it
            decoded = []
            for k in raws:
                try:
                    decoded.append(decode_jpegs([batch.items[k].data], self.device)[0])
                except Exception:
                    decoded.append(None)
        images = dict(zip(raws, decoded))
        bad, keep, out = list(batch.bad), [], []
        together: dict[int, Any] = {}  # resampled in one batched call: position in out -> plan
        for k, item in enumerate(batch.items):
            if isinstance(item, RawJpeg):
                if images[k] is None:
                    bad.append(f"{item.path}: cannot be decoded as a JPEG")
                    continue
                if self.batched_resample and item.plan is not None and tuple(images[k].shape[1:]) == item.size:
                    together[len(out)] = item.plan
                    out.append(images[k])
                else:
                    out.append(apply_geometry(images[k], item.ops))
            else:
                out.append(item.to(self.device, non_blocking=True))
            keep.append(k)
        done = resample_batch([out[i] for i in together], list(together.values())) if together else None
        if done is not None and len(together) < len(out):
            for i, img in zip(together, done):
                out[i] = img
        y = batch.targets.to(self.device, non_blocking=True)
        if len(keep) < len(batch.items):
            y = y[small_tensor(keep, torch.long, self.device)]
        if done is not None and len(together) == len(out):
            x = done  # every image resampled together: already the batch
        else:
            x = torch.stack(out) if out else torch.empty(0, device=self.device)
        return x, y, (bad,)

    @staticmethod
    def _join(pieces: list[tuple[torch.Tensor, Any, tuple[Any, ...]]]) -> tuple[torch.Tensor, Any, tuple[Any, ...]]:
        """One batch from its pieces; pieces left empty by undecodable images are left out, their
        names kept."""
        bad = [name for piece in pieces if piece[2] for name in piece[2][0]]
        full = [piece for piece in pieces if piece[0].shape[0] > 0] or pieces[:1]
        if len(full) == 1:
            return full[0][0], full[0][1], (bad,)
        return torch.cat([piece[0] for piece in full]), torch.cat([piece[1] for piece in full]), (bad,)

    def __iter__(self) -> Iterator[Any]:
        if self.stream is None:
            for batch in self.loader:
                yield self._move(batch)
            return
        current = torch.cuda.current_stream(self.device)
        ahead = None
        for batch in self.loader:
            with torch.cuda.stream(self.stream):
                moved = self._move(batch)
            if ahead is not None:
                yield self._ready(ahead, current)
            ahead = moved
        if ahead is not None:
            yield self._ready(ahead, current)

    def _ready(self, batch: Any, current: Any) -> Any:
        current.wait_stream(self.stream)
        for t in batch[:2]:
            t.record_stream(current)  # memory made on the side stream, used on this one
        return batch

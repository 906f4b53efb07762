"""``data.decode=device``: the workers draw the geometry from the JPEG header; decoding and resampling
happen on the training device (on a GPU as a few batched matrix products).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from trainer.data.images import BadImage
from trainer.errors import UserError

log = logging.getLogger(__name__)


class RawJpeg(NamedTuple):
    """A JPEG to decode on the training device: its bytes, the geometry drawn for it, and that
    geometry as one resampling per axis (``plan_resample``; made in the worker, off the training
    process) for the header's ``size``."""

    data: torch.Tensor
    ops: list[Any]
    path: str
    size: tuple[int, int]
    plan: Any


class RawBatch(NamedTuple):
    """``data.decode=device``: a batch of undecoded JPEGs (and finished uint8 images for other files)."""

    items: list[Any]
    targets: Any
    bad: list[str]


class DeviceGeometry:
    """The geometry of a v2 pipeline (RandomResizedCrop + RandomHorizontalFlip, or Resize +
    CenterCrop) cut in two for ``data.decode=device``: the loader's worker draws the random
    parameters from the image size in the JPEG header (the same draws, in the same order, as the
    pipeline makes), and the pixels are resampled on the training device after decoding there."""

    def __init__(self, pipeline: Any) -> None:

        self.steps = list(pipeline.transforms)
        kinds = [type(t) for t in self.steps]
        if kinds not in ([v2.RandomResizedCrop, v2.RandomHorizontalFlip], [v2.Resize, v2.CenterCrop]):
            raise UserError(
                f"data.decode=device supports data.augment=flip_crop or none; this pipeline is "
                f"{[k.__name__ for k in kinds]}. Use data.decode=workers."
            )

    def plan(self, height: int, width: int) -> list[Any]:

        size = [torch.empty((3, height, width), dtype=torch.uint8)]  # no pixels: make_params reads the size
        ops: list[Any] = []
        for t in self.steps:
            if isinstance(t, v2.RandomResizedCrop):
                p = t.make_params(size)
                ops.append(
                    ("resized_crop", p["top"], p["left"], p["height"], p["width"], list(t.size), t.interpolation)
                )
            elif isinstance(t, v2.RandomHorizontalFlip):
                if not bool(torch.rand(1) >= t.p):  # the draw v2 makes before flipping
                    ops.append(("hflip",))
            elif isinstance(t, v2.Resize):
                ops.append(("resize", t.size, t.interpolation, t.max_size))
            else:
                ops.append(("center_crop", list(t.size)))
        return ops


def apply_geometry(img: torch.Tensor, ops: list[Any]) -> torch.Tensor:
    """What :meth:`DeviceGeometry.plan` drew, applied with the kernels the v2 pipeline uses."""

    for op in ops:
        if op[0] == "resized_crop":
            img = F.resized_crop(img, op[1], op[2], op[3], op[4], size=list(op[5]), interpolation=op[6], antialias=True)
        elif op[0] == "hflip":
            img = F.horizontal_flip(img)
        elif op[0] == "resize":
            img = F.resize(img, size=op[1], interpolation=op[2], max_size=op[3], antialias=True)
        else:
            img = F.center_crop(img, list(op[1]))
    return img


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic with a = -0.5, the filter torch's antialiased bicubic resize uses."""
    x = x.abs()
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


_RESAMPLE_FILTERS = {"bilinear": lambda x: (1.0 - x.abs()).clamp_min(0.0), "bicubic": _cubic}


class _AxisPlan(NamedTuple):
    """One axis of one image: ``length`` source pixels (from ``start``) resized to ``size``, of which
    ``count`` are kept from ``offset`` (negative: zero padding), reversed when ``flip``."""

    start: int
    length: int
    size: int
    offset: int
    count: int
    flip: bool = False


def small_tensor(values: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A little host data on ``device`` without a host sync (pinned, copied non_blocking)."""
    cuda = device.type == "cuda"
    return torch.tensor(values, dtype=dtype, pin_memory=cuda).to(device, non_blocking=cuda)


def _center_anchor(size: int, crop: int) -> int:
    return int(round((size - crop) / 2.0)) if crop <= size else -((crop - size) // 2)  # v2.CenterCrop's


def plan_resample(ops: list[Any], height: int, width: int) -> tuple[str, _AxisPlan, _AxisPlan] | None:
    """What :func:`apply_geometry` would do to an image of this size, as one separable resampling
    per axis (for :func:`resample_batch`); None when it is not one (e.g. nearest interpolation)."""

    mode, y, x = None, _AxisPlan(0, height, height, 0, height), _AxisPlan(0, width, width, 0, width)
    for op in ops:
        if op[0] in ("resized_crop", "resize") and mode is not None:
            return None  # two resamplings in a row are not one
        if op[0] == "resized_crop":
            size = list(op[5]) * (2 if len(op[5]) == 1 else 1)
            mode = op[6].value
            y, x = _AxisPlan(op[1], op[3], size[0], 0, size[0]), _AxisPlan(op[2], op[4], size[1], 0, size[1])
        elif op[0] == "hflip":
            x = x._replace(flip=not x.flip)
        elif op[0] == "resize":
            mode = op[2].value
            # v2's own size rule, on an empty image (no pixels are touched)
            h, w = F.resize(torch.empty((0, y.count, x.count)), op[1], max_size=op[3]).shape[-2:]
            y, x = y._replace(size=h, offset=0, count=h), x._replace(size=w, offset=0, count=w)
        elif op[0] == "center_crop":
            ch, cw = (list(op[1]) * 2)[:2] if len(op[1]) == 1 else op[1]
            y = y._replace(offset=y.offset + _center_anchor(y.count, ch), count=ch)
            x = x._replace(offset=x.offset + _center_anchor(x.count, cw), count=cw)
        else:
            return None
    if mode not in _RESAMPLE_FILTERS or x.flip and x.offset != 0:  # a flip before a center crop: not modelled
        return None
    return mode, y, x


def _resample_weights(plans: list[_AxisPlan], span: int, mode: str, device: torch.device) -> torch.Tensor:
    """(N, count, span) matrices: row o holds the weights torch's antialiased resize gives the
    source pixels for output pixel o (source pixel j at column j - start)."""
    kernel = _RESAMPLE_FILTERS[mode]  # zero outside its support, so no window is needed
    p = small_tensor([[a.length, a.size, a.offset, int(a.flip)] for a in plans], torch.float32, device)
    length, size, offset, flip = (p[:, k, None] for k in range(4))
    count = plans[0].count
    o = torch.arange(count, dtype=torch.float32, device=device)[None]
    r = offset + torch.where(flip > 0, count - 1 - o, o)  # the resized pixel each output pixel is
    scale = length / size
    invscale = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))  # wider filter when shrinking
    center = scale * (r + 0.5)
    j = torch.arange(span, dtype=torch.float32, device=device)[None, None]
    w = kernel((j - center[..., None] + 0.5) * invscale[..., None])
    w = w * (j < length[..., None]) * ((r >= 0) & (r < size))[..., None]  # inside the source; padding rows 0
    total = w.sum(-1, keepdim=True)
    return w / torch.where(total == 0, torch.ones_like(total), total)


def resample_batch(
    images: list[torch.Tensor], plans: list[tuple[str, _AxisPlan, _AxisPlan]], budget: int = 1 << 24
) -> torch.Tensor:
    """uint8 images (3, H, W) of any sizes, each cropped, resized (antialiased), flipped and center
    cropped as its plan says, in a few batched matrix products instead of a chain of kernels per
    image. The same arithmetic as torch's antialiased bilinear/bicubic resize, in float32; rounded
    and clamped to uint8 as v2 does. Images are cropped, then padded to a common size in groups of
    similar size (at most ``budget`` padded pixels each), so odd sizes do not blow up memory."""
    device = images[0].device
    out = torch.empty(
        (len(images), images[0].shape[0], plans[0][1].count, plans[0][2].count), dtype=torch.uint8, device=device
    )
    # the source region each image needs (the crop, or the whole image)
    crops = [
        img[:, y.start : y.start + y.length, x.start : x.start + x.length] for img, (_, y, x) in zip(images, plans)
    ]
    order = sorted(range(len(images)), key=lambda k: (plans[k][0], crops[k].shape[1], crops[k].shape[2]))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32: weights in TF32 would move pixels by a level
    try:
        while order:
            group = [order.pop(0)]
            rows, cols = crops[group[0]].shape[1:]
            area = rows * cols  # the group's real pixels
            while order and plans[order[0]][0] == plans[group[0]][0]:
                h, w = crops[order[0]].shape[1:]
                padded = (len(group) + 1) * max(rows, h) * max(cols, w)
                if padded > budget or padded > 2 * (area + h * w):
                    break
                group.append(order.pop(0))
                rows, cols, area = max(rows, h), max(cols, w), area + h * w
            # (n, rows, channels, cols): each pass is then one plain batched product, no broadcast copies
            channels = crops[group[0]].shape[0]
            if all(crops[k].shape[1:] == (rows, cols) for k in group):
                src = torch.stack([crops[k] for k in group]).transpose(1, 2).contiguous()
            else:
                src = torch.zeros((len(group), rows, channels, cols), dtype=torch.uint8, device=device)
                for i, k in enumerate(group):
                    src[i, : crops[k].shape[1], :, : crops[k].shape[2]] = crops[k].transpose(0, 1)
            mode = plans[group[0]][0]
            wy = _resample_weights([plans[k][1] for k in group], rows, mode, device)  # (n, out rows, rows)
            wx = _resample_weights([plans[k][2] for k in group], cols, mode, device)  # (n, out cols, cols)
            n, out_rows, out_cols = len(group), wy.shape[1], wx.shape[1]
            res = torch.bmm(wy, src.float().view(n, rows, channels * cols))  # rows resampled
            res = torch.bmm(res.view(n, out_rows * channels, cols), wx.transpose(1, 2))  # then columns
            res = res.view(n, out_rows, channels, out_cols).round_().clamp_(0, 255).to(torch.uint8).transpose(1, 2)
            out.index_copy_(0, small_tensor(group, torch.long, device), res)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def collate_raw(items: list[Any]) -> RawBatch:
    """``data.decode=device``: undecoded JPEGs and their targets; unreadable files named."""

    good = [it for it in items if not isinstance(it, BadImage)]
    targets = default_collate([t for _, t in good]) if good else torch.empty(0, dtype=torch.long)
    return RawBatch([x for x, _ in good], targets, [str(it) for it in items if isinstance(it, BadImage)])

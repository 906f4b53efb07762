"""Segmentation: a timm ``features_only`` encoder with a light U-Net or FPN decoder."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class UNetDecoder(nn.Module):
    """Light U-Net decoder: from the deepest feature map up, upsample x2, concatenate the skip, two 3x3 convs."""

    def __init__(self, encoder_channels: list[int], channels: list[int], num_classes: int) -> None:
        super().__init__()
        skips = encoder_channels[:-1][::-1]
        chans = (list(channels) + [channels[-1]] * len(skips))[: len(skips)]
        blocks, cin = [], encoder_channels[-1]
        for skip, cout in zip(skips, chans):
            blocks.append(nn.Sequential(_conv_bn_relu(cin + skip, cout), _conv_bn_relu(cout, cout)))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(cin, num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, features[:-1][::-1]):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return nn.functional.interpolate(self.classifier(x), size=size, mode="bilinear", align_corners=False)


class FPNDecoder(nn.Module):
    """Feature pyramid: 1x1 laterals, top-down sums, 3x3 smoothing, maps merged at the finest level."""

    def __init__(self, encoder_channels: list[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in encoder_channels)
        self.smooth = nn.ModuleList(_conv_bn_relu(channels, channels) for _ in encoder_channels)
        self.merge = _conv_bn_relu(channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        laterals = [lat(f) for lat, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + nn.functional.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        finest = laterals[0].shape[-2:]
        merged = sum(
            nn.functional.interpolate(sm(x), size=finest, mode="bilinear", align_corners=False)
            for sm, x in zip(self.smooth, laterals)
        )
        out = self.classifier(self.merge(merged))
        return nn.functional.interpolate(out, size=size, mode="bilinear", align_corners=False)


def _conv_bn_relu(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegmentationModel(nn.Module):
    """``encoder`` (a timm features_only backbone) -> ``decoder`` -> class logits at the input's size."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x), x.shape[-2:])

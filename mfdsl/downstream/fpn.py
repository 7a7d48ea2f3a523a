"""torchvision's ``BackboneWithFPN`` for an mfdsl body: dense outputs -> FPN levels."""
from __future__ import annotations

from collections import OrderedDict
from typing import List

import torch
import torch.nn as nn
from torchvision.ops.feature_pyramid_network import (
    FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7)

from .backbone import DenseFeatures

# extra levels past the body's last output: none, one by max pooling (Faster / Mask R-CNN),
# two by strided 3x3 convs on the body's last map (RetinaNet, mmdet's add_extra_convs=
# 'on_input' as in the official PoolFormer RetinaNet config)
EXTRAS = ("none", "maxpool", "p6p7")


class FPNBackbone(nn.Module):
    """``body`` (a :class:`DenseFeatures`) then torchvision's ``FeaturePyramidNetwork``:
    ``forward(images)`` is an ``OrderedDict`` of (B, out_channels, H_l, W_l) levels, the
    body's keys (``"0"``, ``"1"``, ...) then the extra levels' (``"pool"``, or ``"p6"``,
    ``"p7"``). ``out_channels`` (an int) is what torchvision's detectors read;
    ``strides`` is each level's nominal reduction."""

    def __init__(self, body: DenseFeatures, out_channels: int = 256,
                 extra: str = "maxpool") -> None:
        super().__init__()
        if not isinstance(body, DenseFeatures):
            raise TypeError(f"FPNBackbone takes a DenseFeatures body, got {type(body).__name__}")
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be an int >= 1, got {out_channels!r}")
        if extra not in EXTRAS:
            raise ValueError(f"extra must be one of {', '.join(EXTRAS)}, got {extra!r}")
        blocks = {"none": None, "maxpool": LastLevelMaxPool(),
                  "p6p7": LastLevelP6P7(body.out_channels[-1], out_channels)}[extra]
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels, extra_blocks=blocks)
        self.out_channels: int = out_channels
        n_extra = {"none": 0, "maxpool": 1, "p6p7": 2}[extra]
        last = body.strides[-1]
        self.strides: List[int] = list(body.strides) + [last * 2 ** (k + 1)
                                                        for k in range(n_extra)]
        self.names: List[str] = list(body.names)  # the body's levels (RoI pooling reads these)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(x))

"""Semantic FPN (Kirillov et al. 2019) on an mfdsl backbone, as the official PoolFormer
mmsegmentation config builds it: mmseg's ``FPN`` neck (4 levels, no extra) and
``FPNHead`` (channels 128, dropout 0.1), cross-entropy on logits resized to the image."""
from __future__ import annotations

import math
from typing import Callable, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from .backbone import DenseFeatures


def _conv_norm_relu(cin: int, cout: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    """mmcv's ``ConvModule(cin, cout, 3, padding=1, norm_cfg=...)``: conv without bias,
    norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm(cout),
                         nn.ReLU(inplace=True))


class _ScaleHead(nn.Module):
    """One level of mmseg's ``FPNHead``: ``max(1, log2(stride / first stride))`` conv-norm-
    ReLU blocks, each but on the first level followed by a 2x bilinear upsampling."""

    def __init__(self, cin: int, cout: int, steps: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            _conv_norm_relu(cin if k == 0 else cout, cout, norm) for k in range(max(1, steps)))
        self.upsample = steps > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
            if self.upsample:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return x


class SemanticFPN(nn.Module):
    """``forward(images)`` -> (B, num_classes, H, W) logits at the images' size.

    ``body``'s maps go through an FPN (``fpn_channels``, one output per map); level i then
    through ``log2(stride_i / stride_0)`` conv-norm-ReLU + 2x upsampling steps (one conv on
    level 0), each resized to level 0's size and summed; dropout, a 1x1 classifier, and a
    bilinear resize to the input (align_corners False). The body's strides must be the
    first one times powers of 2. ``norm``: the head's norm (the official config's SyncBN:
    ``nn.BatchNorm2d`` here; convert with ``nn.SyncBatchNorm.convert_sync_batchnorm``)."""

    def __init__(self, body: DenseFeatures, num_classes: int, *, fpn_channels: int = 256,
                 head_channels: int = 128, dropout: float = 0.1,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        if not isinstance(body, DenseFeatures):
            raise TypeError(f"SemanticFPN takes a DenseFeatures body (mfdsl.downstream."
                            f"dense_features), got {type(body).__name__}")
        for what, v in (("num_classes", num_classes), ("fpn_channels", fpn_channels),
                        ("head_channels", head_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{what} must be an int >= 1, got {v!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        steps: List[int] = []
        for s in body.strides:
            ratio = s / body.strides[0]
            k = round(math.log2(ratio)) if ratio >= 1 else -1
            if k < 0 or 2 ** k != ratio:
                raise ValueError(f"SemanticFPN needs strides that are the first one times "
                                 f"powers of 2; the body's are {body.strides}")
            steps.append(k)
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, fpn_channels)
        self.scale_heads = nn.ModuleList(_ScaleHead(fpn_channels, head_channels, k, norm)
                                         for k in steps)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        levels = list(self.fpn(self.body(images)).values())
        out = self.scale_heads[0](levels[0])
        for head, x in zip(self.scale_heads[1:], levels[1:]):
            out = out + F.interpolate(head(x), size=out.shape[-2:], mode="bilinear",
                                      align_corners=False)
        logits = self.classifier(self.dropout(out))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                             align_corners=False)

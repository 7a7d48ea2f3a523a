"""Pointwise (per-position) linear layers over channels-last tensors (B, H, W, C)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .variants import speed_variant


class Pointwise(nn.Linear):
    """An ``nn.Linear`` applied at every position of a (B, H, W, C) map (timm's 1x1 conv).

    ``linear(x, weight, bias)`` applies the layer's kernel with other weights; the fused
    variants of Mlp / SepConv use it so that they follow whichever variant this layer is.
    """

    def linear(self, x: torch.Tensor, weight: torch.Tensor,
               bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.weight, self.bias)


@speed_variant("pointwise_conv1x1", Pointwise,
               doc="a 1x1 convolution over the channels-last NCHW view (oneDNN on CPU)")
class Conv1x1Pointwise(Pointwise):
    """Same maths as :class:`Pointwise` through ``F.conv2d`` with the [out, in] weight
    viewed as [out, in, 1, 1].

    Why: on CPU eager, oneDNN's channels-last 1x1 convolution measured 2-3x faster than the
    MKL GEMM behind ``F.linear`` for these tall-skinny shapes (25088x64 @ 64x256: 1.9 ms
    against 5.8 ms on 2 cores), forward and backward. The output is channels-last, so the
    permutes are free.
    """

    def linear(self, x: torch.Tensor, weight: torch.Tensor,
               bias: Optional[torch.Tensor]) -> torch.Tensor:
        return linear_as_conv1x1(x, weight, bias)


def linear_as_conv1x1(x: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` of a (B, H, W, C) ``x`` as a 1x1 convolution of its
    NCHW view; of another rank, ``F.linear`` itself."""
    if x.dim() != 4:
        return F.linear(x, weight, bias)
    y = F.conv2d(x.permute(0, 3, 1, 2), weight[:, :, None, None], bias)
    return y.permute(0, 2, 3, 1)


# The rank test above is not part of a traced graph: torch.fx records the call whole.
torch.fx.wrap("linear_as_conv1x1")

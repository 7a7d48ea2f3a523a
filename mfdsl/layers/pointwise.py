"""Pointwise (per-position) linear layers over channels-last tensors."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def pointwise(x: torch.Tensor, weight: torch.Tensor,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear`` over the last dim of ``x``; for (B, H, W, C) CPU tensors it runs as a
    1x1 convolution on the channels-last NCHW view instead.

    Why: on CPU oneDNN's channels-last 1x1 convolution measured 2-3x faster than the MKL
    GEMM behind ``F.linear`` for these tall-skinny shapes (e.g. 25088x64 @ 64x256: 1.9 ms
    against 5.8 ms on 2 cores), forward and backward. Same maths, same weight tensor (a
    [out, in] view as [out, in, 1, 1]); the output is channels-last, so the permutes are
    free. CUDA keeps cuBLAS via F.linear.
    """
    if x.dim() == 4 and x.device.type == "cpu" and x.is_contiguous():
        y = F.conv2d(x.permute(0, 3, 1, 2), weight[:, :, None, None], bias)
        return y.permute(0, 2, 3, 1)
    return F.linear(x, weight, bias)


class Pointwise(nn.Linear):
    """An ``nn.Linear`` (same parameters and state dict) applied through :func:`pointwise`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise(x, self.weight, self.bias)

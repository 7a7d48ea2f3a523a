"""Depthwise k x k convolution (one filter per channel, stride 1, 'same' padding)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .aten_ops import nhwc_padded
from .variants import speed_variant


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(C, C, k, padding=k // 2, groups=C)``: the same parameters and state dict.

    ``conv(x, weight)`` applies the layer's kernel with other weights; fused variants of the
    layers around it use it, so that they follow whichever variant this layer is.
    """

    def __init__(self, channels: int, kernel: int, bias: bool = True) -> None:
        super().__init__(channels, channels, kernel, padding=kernel // 2, groups=channels,
                         bias=bias)

    def conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.weight)


def depthwise_grad_weight(x: torch.Tensor, grad: torch.Tensor, kernel: int) -> torch.Tensor:
    """dL/dW[c, 0, i, j] = sum over (b, h, w) of grad[b, c, h, w] * x_pad[b, c, h + i, w + j]
    for a stride-1 depthwise conv with padding kernel // 2, as (C, 1, k, k), summed in
    float32 at least.

    Written as k * k shifted products summed over every position but the channel, on
    channels-last (B, H, W, C) copies, so that inductor makes one pass over both with the
    k * k per-channel sums vectorised over C. The copies are opaque ops: inlined, whatever
    computes x or grad (the partitioner recomputes cheap activations in backward) would be
    recomputed at each of the k * k offsets (measured 2.3x slower in a SepConv).
    """
    acc = torch.promote_types(torch.promote_types(x.dtype, grad.dtype), torch.float32)
    xp = nhwc_padded(x.to(acc), kernel // 2)
    gh = nhwc_padded(grad.to(acc), 0)
    h, w = gh.shape[1], gh.shape[2]
    rows = [torch.stack([(xp[:, i:i + h, j:j + w, :] * gh).sum((0, 1, 2))
                         for j in range(kernel)], -1) for i in range(kernel)]
    return torch.stack(rows, -2).unsqueeze(1)  # (C, k, k) -> (C, 1, k, k)


class _DepthwiseConvShiftBackward(torch.autograd.Function):
    """Forward: the depthwise conv (oneDNN). Backward: the input gradient as the forward
    conv of the gradient with the flipped kernel, the weight gradient by
    :func:`depthwise_grad_weight`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                kernel: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.kernel = kernel
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, 1, kernel // 2, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        k = ctx.kernel
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # stride 1, padding k // 2: the transposed conv is the conv with the kernel
            # flipped in both spatial dims
            gx = F.conv2d(grad, weight.flip(2, 3).to(grad.dtype), None, 1, k // 2, 1,
                          x.shape[1]).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = depthwise_grad_weight(x, grad, k).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            acc = torch.promote_types(grad.dtype, torch.float32)
            gb = grad.sum((0, 2, 3), dtype=acc).to(weight.dtype)
        return gx, gw, gb, None


# oneDNN has a fast weight-gradient kernel for 3x3 depthwise convs (1.4 ms at 8x128x56x56,
# against 2.8 ms by shifts) and a slow one for 5x5 to 9x9 (15.6 / 24.6 / 40.0 ms against
# 6.3 / 11.5 / 18.4); above 9x9 the k * k unrolled sums compile too slowly (20 s at 9x9).
_SHIFT_KERNELS = (5, 7, 9)


def _shift_backward_applies(m: nn.Module) -> bool:
    k = m.kernel_size
    return (k[0] == k[1] and k[0] in _SHIFT_KERNELS and m.stride == (1, 1)
            and m.dilation == (1, 1) and m.padding == (k[0] // 2, k[0] // 2)
            and m.padding_mode == "zeros" and m.groups == m.in_channels == m.out_channels)


@speed_variant("depthwise_backward_by_shifts", DepthwiseConv2d,
               applies=_shift_backward_applies,
               doc="5x5-9x9 depthwise conv backward: grad input as a conv, grad weight as "
                   "k*k shifted sums (for inductor)")
class DepthwiseConv2dShiftBackward(DepthwiseConv2d):
    """Why: on CPU, oneDNN's weight gradient for 5x5-9x9 depthwise kernels runs near
    10 GFLOP/s (24.6-29.3 ms for 7x7 at 8x128x56x56, 6x the forward); compiled, the shifted
    sums take 11.5 ms, and the input gradient as a forward conv 3.0 ms against 7.6 ms.
    Eager, the k * k sums are k * k passes over memory (1.9x slower): compiled only."""

    def conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # no autograd.Function there: the same conv, ATen's backward
            return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation,
                            self.groups)
        return _DepthwiseConvShiftBackward.apply(x, weight, self.bias, self.kernel_size[0])

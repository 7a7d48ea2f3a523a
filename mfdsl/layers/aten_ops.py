"""ATen kernels kept whole under torch.compile: custom ops that inductor calls as they are.

``nhwc_padded``: a materialised, zero-padded channels-last copy, so that a reduction that
reads it at many offsets (the depthwise weight gradient, mfdsl/layers/depthwise.py) reads
memory instead of recomputing the tensor's producers at every offset.

Inductor decomposes a norm into its own reduction kernels. For GroupNorm with one group
over a channels-last (B, C, H, W) tensor those kernels measured 2x slower (inference) and
1.4x slower (training) on CPU than ATen's channels-last kernel, so the speed variant
``modified_layernorm_groupnorm_op`` calls ATen's forward and backward through these ops.
An op's output strides must equal its fake (meta) implementation's, or compiled code would
index them wrongly: both give ``torch.empty_like`` of the input.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@torch.library.custom_op("mfdsl::nhwc_padded", mutates_args=())
def nhwc_padded(x: Tensor, pad: int) -> Tensor:
    """(B, C, H, W) -> a contiguous (B, H + 2 pad, W + 2 pad, C) tensor, zeros around."""
    return F.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad)).contiguous()


@nhwc_padded.register_fake
def _(x: Tensor, pad: int) -> Tensor:
    b, c, h, w = x.shape
    return x.new_empty(b, h + 2 * pad, w + 2 * pad, c)


def _like(x: Tensor, y: Tensor) -> Tensor:
    """``y`` with the strides ``torch.empty_like(x)`` has (what the fake op promises)."""
    out = torch.empty_like(x)
    if out.stride() == y.stride():
        return y
    return out.copy_(y)


@torch.library.custom_op("mfdsl::group_norm_1", mutates_args=())
def group_norm_1(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                 eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """GroupNorm with one group of a (B, C, H, W) tensor: (output, mean, rstd)."""
    n, c, h, w = x.shape
    y, mean, rstd = torch.ops.aten.native_group_norm(_for_kernel(x), weight, bias, n, c,
                                                     h * w, 1, eps)
    return _like(x, y), mean, rstd


@group_norm_1.register_fake
def _(x: Tensor, weight: Tensor, bias: Optional[Tensor],
      eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x), x.new_empty(x.shape[0], 1), x.new_empty(x.shape[0], 1)


@torch.library.custom_op("mfdsl::group_norm_1_backward", mutates_args=())
def group_norm_1_backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                          weight: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`group_norm_1` for x, weight and bias."""
    n, c, h, w = x.shape
    xk = _for_kernel(x)
    gx, gw, gb = torch.ops.aten.native_group_norm_backward(
        grad.contiguous(memory_format=_format_of(xk)), xk, mean, rstd, weight, n, c, h * w, 1,
        [True, True, True])
    return _like(x, gx), gw.contiguous(), gb.contiguous()


@group_norm_1_backward.register_fake
def _(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
      weight: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


def _for_kernel(x: Tensor) -> Tensor:
    """The input as the device's kernel takes it: CPU's has a channels-last path, CUDA's
    (torch 2.11, H100) asks for a contiguous tensor."""
    return x if x.device.type == "cpu" else x.contiguous()


def _format_of(x: Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last and not x.is_contiguous() else \
        torch.contiguous_format


def _setup(ctx, inputs, output) -> None:
    x, weight, bias, _ = inputs
    ctx.save_for_backward(x, output[1], output[2], weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad: Tensor, grad_mean: Tensor, grad_rstd: Tensor):
    x, mean, rstd, weight = ctx.saved_tensors
    gx, gw, gb = group_norm_1_backward(grad, x, mean, rstd, weight)
    return gx, gw, gb if ctx.has_bias else None, None


group_norm_1.register_autograd(_backward, setup_context=_setup)

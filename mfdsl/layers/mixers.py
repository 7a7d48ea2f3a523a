"""Token mixers on channels-last tensors (B, H, W, C)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import BuildContext, Maker, Param, register_mixer
from .activations import StarReLU
from .depthwise import DepthwiseConv2d
from .pointwise import Pointwise
from .variants import speed_variant

Problems = List[Tuple[str, str, Optional[str]]]


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> a channels-last strided (B, C, H, W) view; no copy."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _kernel_fits(ctx: BuildContext, kernel: int, arg: str = "kernel") -> Problems:
    h, w = ctx.resolution
    if kernel > max(h, w):
        return [(arg, f"kernel {kernel} is larger than the {h}x{w} feature map of stage "
                      f"{ctx.stage}", f"use a kernel <= {max(h, w)} or a larger input")]
    return []


# --- identity -------------------------------------------------------------------------

@register_mixer("identity", doc="no token mixing (IdentityFormer)")
def _identity(ctx: BuildContext) -> nn.Module:
    return nn.Identity()


# --- random ---------------------------------------------------------------------------

class RandomMixing(nn.Module):
    """y[b, m, c] = sum_n W[m, n] x[b, n, c] with a frozen W = softmax(rand(N, N))."""

    commutes_with_channel_scale = True  # W (s x) = s (W x) per channel

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        self.random_matrix = nn.Parameter(
            torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1), requires_grad=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        y = torch.matmul(self.random_matrix, x.reshape(b, h * w, c))
        return y.reshape(b, h, w, c)


@register_mixer("random", any_size=False, doc="frozen random token mixing (RandFormer); N = H*W of the stage")
def _random(ctx: BuildContext) -> nn.Module:
    h, w = ctx.resolution
    return RandomMixing(h * w)


# --- pooling --------------------------------------------------------------------------

class Pooling(nn.Module):
    """AvgPool(k, stride 1, count_include_pad=False)(x) - x (PoolFormer)."""

    commutes_with_channel_scale = True  # pool(s x) - s x = s (pool(x) - x)

    def __init__(self, pool_size: int = 3) -> None:
        super().__init__()
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _nhwc(avg_pool_same(_nchw(x), self.pool_size)) - x


def avg_pool_same(x: torch.Tensor, k: int) -> torch.Tensor:
    """``AvgPool2d(k, stride 1, padding k // 2, count_include_pad=False)`` of NCHW ``x``."""
    if x.is_cuda:
        # CUDA's avg_pool2d backward gives wrong input gradients for a channels-last
        # input with padding (pytorch/pytorch#188344; errors of order 1 with torch 2.11
        # on an H100, eager and compiled); its NCHW kernel is right.
        x = x.contiguous()
    return F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)


# The device test above is not part of a traced graph: torch.fx records the call whole.
torch.fx.wrap("avg_pool_same")


@speed_variant("pooling_as_depthwise_conv", Pooling,
               doc="the window sum as a depthwise conv of ones, divided by the window count")
class PoolingAsDepthwiseConv(Pooling):
    """Why: compiled on CPU, inductor inlines ``avg_pool2d`` into the modified LayerNorm's
    reduction that follows (poolformerv2_s12 inference: one such kernel took 38 ms where
    eager's pool + norm take 0.5 ms). As a convolution the window sum stays an extern
    oneDNN call that nothing is fused into. ``count_include_pad=False``: each output is
    divided by the number of in-image pixels in its window, itself a tiny convolution of
    ones that depends on the shape alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, pad = self.pool_size, self.pool_size // 2
        xc = _nchw(x)
        chans, h, w = xc.shape[1], xc.shape[2], xc.shape[3]
        ones = xc.new_ones([chans, 1, k, k])
        window_sum = F.conv2d(xc, ones, None, 1, pad, 1, chans)
        count = F.conv2d(xc.new_ones([1, 1, h, w]), ones[:1], None, 1, pad)
        # the division on the (B, H, W, C) views, as every elementwise op of the blocks:
        # compiled, its gradient then comes out channels-last for the conv's backward
        return _nhwc(window_sum) / _nhwc(count) - x


def _check_pool(ctx: BuildContext, args: Dict[str, Any]) -> Problems:
    p = args["pool_size"]
    if p % 2 == 0:
        return [("pool_size", f"pool_size {p} must be odd to keep the feature-map size",
                 f"use {p - 1} or {p + 1}")]
    return _kernel_fits(ctx, p, "pool_size")


@register_mixer(
    "pooling", Param("pool_size", int, 3, min=1, max=31), check=_check_pool,
    doc="average pooling minus identity (PoolFormer)",
)
def _pooling(ctx: BuildContext, pool_size: int) -> nn.Module:
    return Pooling(pool_size)


# --- sepconv --------------------------------------------------------------------------

class SepConv(nn.Module):
    """Inverted separable conv (MobileNetV2): pw Linear -> act -> dw conv -> act2 -> pw Linear."""

    def __init__(self, dim: int, expansion: float = 2, kernel: int = 7,
                 act: Optional[Maker] = None, act2: Optional[Maker] = None,
                 bias: bool = False) -> None:
        super().__init__()
        mid = int(expansion * dim)
        self.pwconv1 = Pointwise(dim, mid, bias=bias)
        self.act1 = act(mid) if act is not None else nn.Identity()
        self.dwconv = DepthwiseConv2d(mid, kernel, bias=bias)
        self.act2 = act2(mid) if act2 is not None else nn.Identity()
        self.pwconv2 = Pointwise(mid, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pwconv1(x)
        x = self.act1(x)
        x = _nhwc(self.dwconv(_nchw(x)))
        x = self.act2(x)
        x = self.pwconv2(x)
        return x

    # folding protocol (mfdsl.passes.fold)
    def first_linear(self) -> nn.Module:
        return self.pwconv1

    def last_linear(self) -> nn.Module:
        return self.pwconv2

    def activation_sites(self) -> List[Tuple[str, nn.Module]]:
        return [("act1", self.dwconv), ("act2", self.pwconv2)]


@speed_variant("sepconv_starrelu_into_convs", SepConv,
               applies=lambda m: isinstance(m.act1, StarReLU),
               bypasses=("act1", "pwconv1", "dwconv"),
               doc="StarReLU's s split between pwconv1 and the depthwise conv at run time")
class SepConvStarReLUIntoConvs(SepConv):
    """With h = W1 x and g = sign(s): s * relu(h)^2 + b = g * (relu(h')^2 + g * b) where
    h' = sqrt(|s|) W1 x, and g moves into the (linear) depthwise conv's weight.

    Why: two elementwise passes (relu, addcmul) instead of three, with no host sync on s.
    The sqrt's argument is clamped away from 0 so a zero scale keeps a finite gradient.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act, pw1, dw = self.act1, self.pwconv1, self.dwconv
        s = act.scale
        sign = torch.where(s < 0, -1.0, 1.0).to(s.dtype)
        root = s.abs().clamp_min(1e-30).sqrt()
        b1 = pw1.bias * root if pw1.bias is not None else None
        r = F.relu(pw1.linear(x, pw1.weight * root, b1))
        a = torch.addcmul(act.bias * sign, r, r)
        y = dw.conv(_nchw(a), dw.weight * sign)
        return self.pwconv2(self.act2(_nhwc(y)))


def _check_odd_kernel(ctx: BuildContext, args: Dict[str, Any]) -> Problems:
    k = args["kernel"]
    if k % 2 == 0:
        return [("kernel", f"kernel {k} must be odd to keep the feature-map size",
                 f"use {k - 1} or {k + 1}")]
    return _kernel_fits(ctx, k)


@register_mixer(
    "sepconv",
    Param("kernel", int, 7, min=1, max=63, doc="depthwise kernel size (odd)"),
    Param("expansion", float, 2.0, min=0.0, max=16.0, min_exclusive=True,
          doc="hidden width / width"),
    Param("act", "activation", "starrelu", doc="after the first pointwise layer"),
    Param("act2", "activation", "identity", doc="after the depthwise conv"),
    Param("bias", bool, False),
    check=_check_odd_kernel,
    doc="inverted separable convolution (ConvFormer)",
)
def _sepconv(ctx: BuildContext, kernel: int, expansion: float, act: Maker,
             act2: Maker, bias: bool) -> nn.Module:
    return SepConv(ctx.dim, expansion, kernel, act, act2, bias)


# --- attention ------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention over all H*W tokens, no position embedding.

    As in the official code and timm's ``Attention(dim, head_dim=32, num_heads=None)``:
    ``heads`` given, each head keeps ``head_dim`` channels, so the attention width is
    ``heads * head_dim`` (which may differ from ``dim``); else ``dim // head_dim`` heads."""

    def __init__(self, dim: int, head_dim: int = 32, heads: Optional[int] = None,
                 qkv_bias: bool = False, proj_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = heads if heads is not None else max(1, dim // head_dim)
        inner = self.num_heads * self.head_dim
        self.scale = head_dim ** -0.5
        self.qkv = Pointwise(dim, 3 * inner, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Pointwise(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        y = y.transpose(1, 2).reshape(b, h, w, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(y))

    # folding protocol (proj_drop is the identity in eval)
    def first_linear(self) -> nn.Module:
        return self.qkv

    def last_linear(self) -> nn.Module:
        return self.proj


def _check_attention(ctx: BuildContext, args: Dict[str, Any]) -> Problems:
    dim = ctx.dim
    if args.get("heads") is not None:
        return []  # heads x head_dim channels of attention, whatever the width
    hd = args["head_dim"]
    if dim % hd:
        divisors = [d for d in (16, 24, 32, 48, 64, 96, 128) if dim % d == 0]
        hint = (f"head_dim values that divide {dim}: {divisors}" if divisors
                else f"use a width that is a multiple of {hd}")
        return [("head_dim", f"width {dim} is not divisible into heads of head_dim {hd}", hint)]
    return []


@register_mixer(
    "attention",
    Param("head_dim", int, 32, min=1, max=1024, doc="channels per head"),
    Param("heads", int, None, min=1, max=1024,
          doc="number of heads, each of head_dim channels: attention width heads x head_dim, "
              "as timm's num_heads (none: width // head_dim heads)"),
    Param("qkv_bias", bool, False),
    Param("proj_bias", bool, False),
    Param("attn_drop", float, 0.0, min=0.0, max=1.0),
    Param("proj_drop", float, 0.0, min=0.0, max=1.0),
    check=_check_attention,
    doc="multi-head self-attention (CAFormer)",
)
def _attention(ctx: BuildContext, head_dim: int, heads: Optional[int], qkv_bias: bool,
               proj_bias: bool, attn_drop: float, proj_drop: float) -> nn.Module:
    return Attention(ctx.dim, head_dim, heads, qkv_bias, proj_bias, attn_drop, proj_drop)


# --- dwconv (hybrid) ------------------------------------------------------------------

class DepthwiseConv(nn.Module):
    """A depthwise k x k conv as the token mixer (ConvNeXt-style)."""

    def __init__(self, dim: int, kernel: int = 7, bias: bool = True) -> None:
        super().__init__()
        self.conv = DepthwiseConv2d(dim, kernel, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _nhwc(self.conv(_nchw(x)))

    def last_linear(self) -> nn.Module:  # folding protocol
        return self.conv


@register_mixer(
    "dwconv",
    Param("kernel", int, 7, min=1, max=63, doc="kernel size (odd)"),
    Param("bias", bool, True),
    check=_check_odd_kernel,
    doc="depthwise convolution (ConvNeXt-style mixer)",
)
def _dwconv(ctx: BuildContext, kernel: int, bias: bool) -> nn.Module:
    return DepthwiseConv(ctx.dim, kernel, bias)


# --- global filter (hybrid) -----------------------------------------------------------

class GlobalFilter(nn.Module):
    """GFNet's global filter: y = irfft2(rfft2(x) * W) with a learned complex W per
    frequency and channel; its size follows the stage's resolution."""

    # linear and per channel: irfft2(rfft2(s x) W) = s irfft2(rfft2(x) W)
    commutes_with_channel_scale = True

    def __init__(self, dim: int, h: int, w: int) -> None:
        super().__init__()
        self.h, self.w = h, w
        self.complex_weight = nn.Parameter(torch.randn(h, w // 2 + 1, dim, 2) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        dtype = x.dtype
        xf = torch.fft.rfft2(x.float(), dim=(1, 2), norm="ortho")
        xf = xf * torch.view_as_complex(self.complex_weight.float())
        return torch.fft.irfft2(xf, s=(h, w), dim=(1, 2), norm="ortho").to(dtype)


@register_mixer("global_filter", any_size=False, doc="global FFT filter (GFNet); sized by the stage resolution")
def _global_filter(ctx: BuildContext) -> nn.Module:
    h, w = ctx.resolution
    return GlobalFilter(ctx.dim, h, w)

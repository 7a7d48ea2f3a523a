"""The MetaFormer skeleton: scales, drop path, MLP, block, downsampling, stage."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .activations import StarReLU, starrelu_into_linear
from .mixers import _nchw, _nhwc
from .pointwise import Pointwise
from .variants import speed_variant


class Scale(nn.Module):
    """Per-channel learnable scale on the last dim."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mlp_hidden(ratio: float, dim: int) -> int:
    """Hidden units of an MLP ``ratio`` times as wide as its ``dim`` inputs (truncated, as in
    the reference models); the block MLP and the MLP head both use it."""
    return int(ratio * dim)


class Mlp(nn.Module):
    """fc1 -> act -> fc2, both per position (``Linear(dim, hidden)``, ``Linear(hidden, dim)``)."""

    def __init__(self, dim: int, hidden: int, act: nn.Module, bias: bool = False) -> None:
        super().__init__()
        self.fc1 = Pointwise(dim, hidden, bias=bias)
        self.act = act
        self.fc2 = Pointwise(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.act(x)
        x = self.fc2(x)
        return x

    # folding protocol (mfdsl.passes.fold)
    def first_linear(self) -> nn.Module:
        return self.fc1

    def last_linear(self) -> nn.Module:
        return self.fc2

    def activation_sites(self) -> List[Tuple[str, nn.Module]]:
        return [("act", self.fc2)]


@speed_variant("mlp_starrelu_into_fc2", Mlp,
               applies=lambda m: isinstance(m.act, StarReLU), bypasses=("act", "fc2"),
               doc="StarReLU's s and b applied to fc2's weight at run time")
class MlpStarReLUIntoFc2(Mlp):
    """fc2(s * relu(h)^2 + b) = F.linear(relu(h)^2, s * W2, b * W2.sum(1) + b2).

    Why: the weight-sized products are tiny next to the (B*H*W, hidden) activations, and
    the activation chain drops from four elementwise passes (relu, square, mul, add) to
    two, in backward as well; under no_grad relu and square run in place.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act, fc2 = self.act, self.fc2
        h = self.fc1(x)
        if torch.is_grad_enabled():
            r = F.relu(h).square()
        else:  # nothing keeps h for backward: reuse its buffer
            r = h.relu_().square_()
        weight, bias = starrelu_into_linear(act.scale, act.bias, fc2.weight, fc2.bias)
        return fc2.linear(r, weight, bias)


class Block(nn.Module):
    """x = res1(x) + ls1(dp(mixer(norm1(x)))); x = res2(x) + ls2(dp(mlp(norm2(x))))."""

    def __init__(self, dim: int, norm1: nn.Module, token_mixer: nn.Module, norm2: nn.Module,
                 mlp: nn.Module, drop_path: float = 0.0,
                 layer_scale: Optional[float] = None, res_scale: Optional[float] = None):
        super().__init__()
        self.norm1 = norm1
        self.token_mixer = token_mixer
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1 = Scale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.res_scale1 = Scale(dim, res_scale) if res_scale is not None else nn.Identity()
        self.norm2 = norm2
        self.mlp = mlp
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale2 = Scale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.res_scale2 = Scale(dim, res_scale) if res_scale is not None else nn.Identity()

    def norm_sites(self) -> List[Tuple[str, nn.Module]]:  # folding protocol
        return [("norm1", self.token_mixer), ("norm2", self.mlp)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        x = self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))
        return x


@speed_variant("block_addcmul", Block,
               applies=lambda b: any(isinstance(getattr(b, n), Scale) for n in
                                     ("res_scale1", "layer_scale1", "res_scale2", "layer_scale2")),
               doc="res_scale * x + layer_scale * y as one torch.addcmul")
class BlockAddcmul(Block):
    """Why: ``torch.addcmul`` makes one pass over memory where ``x * s + y`` makes two."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # an absent scale is an nn.Identity without ``scale`` (hasattr: static in TorchScript)
        res1 = self.res_scale1.scale if hasattr(self.res_scale1, "scale") else None
        ls1 = self.layer_scale1.scale if hasattr(self.layer_scale1, "scale") else None
        res2 = self.res_scale2.scale if hasattr(self.res_scale2, "scale") else None
        ls2 = self.layer_scale2.scale if hasattr(self.layer_scale2, "scale") else None
        x = _residual(x, self.drop_path1(self.token_mixer(self.norm1(x))), res1, ls1)
        x = _residual(x, self.drop_path2(self.mlp(self.norm2(x))), res2, ls2)
        return x


def _residual(x: torch.Tensor, y: torch.Tensor, res_s: Optional[torch.Tensor],
              ls_s: Optional[torch.Tensor]) -> torch.Tensor:
    """res_s * x + ls_s * y, an absent scale (None) being 1."""
    if ls_s is None:
        return x + y if res_s is None else torch.addcmul(y, x, res_s)
    return torch.addcmul(x if res_s is None else x * res_s, y, ls_s)


class Downsample(nn.Module):
    """[pre norm] -> strided Conv2d -> [post norm], channels-last in and out.

    The stem is one of these too; it takes the NCHW image (``nchw_input``).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, padding: int,
                 bias: bool = True, pre_norm: Optional[nn.Module] = None,
                 post_norm: Optional[nn.Module] = None, nchw_input: bool = False) -> None:
        super().__init__()
        self.nchw_input = nchw_input
        if pre_norm is not None:
            self.pre_norm = pre_norm
        self.conv = nn.Conv2d(in_chs, out_chs, kernel, stride, padding, bias=bias)
        if post_norm is not None:
            self.post_norm = post_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "pre_norm"):
            x = self.pre_norm(x)
        if self.nchw_input:
            # Performance: a channels-last image makes the stem conv write channels-last
            # output, so the (B, H, W, C) view below is contiguous and the post-norm and
            # its backward need no layout copy of the largest activation. Same values.
            x = x.contiguous(memory_format=torch.channels_last)
        x = _nhwc(self.conv(x if self.nchw_input else _nchw(x)))
        if hasattr(self, "post_norm"):
            x = self.post_norm(x)
        return x

    def norm_sites(self) -> List[Tuple[str, nn.Module]]:  # folding protocol
        return [("pre_norm", self.conv)] if hasattr(self, "pre_norm") else []


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: List[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False  # MetaFormer.set_grad_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if not (self.grad_checkpointing and torch.is_grad_enabled()) or torch.jit.is_scripting():
            return self.blocks(x)
        # Keep only each block's input; recompute the block in backward. Non-reentrant
        # checkpointing replays the RNG state, so drop-path masks are the same twice.
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x

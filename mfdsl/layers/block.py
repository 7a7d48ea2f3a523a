"""The MetaFormer skeleton: scales, drop path, MLP, block, downsampling, stage."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from .mixers import _nchw, _nhwc


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
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear(dim, ratio*dim) -> act -> Linear(ratio*dim, dim)."""

    def __init__(self, dim: int, hidden: int, act: nn.Module, bias: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        x = self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))
        return x


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
        x = _nhwc(self.conv(x if self.nchw_input else _nchw(x)))
        if hasattr(self, "post_norm"):
            x = self.post_norm(x)
        return x


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: List[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))

"""Activations: starrelu, squared_relu, gelu, relu, silu, identity."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import BuildContext, Param, register_activation
from .variants import speed_variant


class StarReLU(nn.Module):
    """s * relu(x)^2 + b with learnable scalars s and b (shape [1])."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0, learnable: bool = True) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(scale)), requires_grad=learnable)
        self.bias = nn.Parameter(torch.full((1,), float(bias)), requires_grad=learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x) ** 2 + self.bias


@speed_variant("starrelu_addcmul", StarReLU,
               doc="relu, square, one fused multiply-add: three passes instead of four")
class StarReLUAddcmul(StarReLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, self.scale, F.relu(x).square())


def starrelu_into_linear(scale: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor,
                         lin_bias: Optional[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The identity W (s * r + b) + c = (s W) r + (b W.sum(1) + c): the weight and bias a
    Linear needs to take relu(x)^2 instead of StarReLU(x). Used at run time by the fused
    MLP variant and offline by the fold pass."""
    new_bias = bias * weight.sum(1)
    if lin_bias is not None:
        new_bias = new_bias + lin_bias
    return weight * scale, new_bias


class SquaredReLU(nn.Module):
    """relu(x)^2, no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


@register_activation(
    "starrelu",
    Param("scale", float, 1.0, doc="initial scale s"),
    Param("bias", float, 0.0, doc="initial bias b"),
    Param("learnable", bool, True, doc="train s and b"),
    doc="StarReLU: s * relu(x)^2 + b",
)
def _starrelu(ctx: BuildContext, scale: float, bias: float, learnable: bool) -> nn.Module:
    return StarReLU(scale, bias, learnable)


@register_activation("squared_relu", doc="relu(x)^2")
def _squared_relu(ctx: BuildContext) -> nn.Module:
    return SquaredReLU()


@register_activation(
    "gelu", Param("approximate", str, "none", choices=("none", "tanh")), doc="GELU"
)
def _gelu(ctx: BuildContext, approximate: str) -> nn.Module:
    return nn.GELU(approximate=approximate)


@register_activation("relu", doc="ReLU")
def _relu(ctx: BuildContext) -> nn.Module:
    return nn.ReLU()


@register_activation("silu", doc="SiLU (swish)")
def _silu(ctx: BuildContext) -> nn.Module:
    return nn.SiLU()


@register_activation("identity", doc="no activation")
def _identity(ctx: BuildContext) -> nn.Module:
    return nn.Identity()

"""Classifier heads on pooled features (B, C)."""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ir import call
from ..registry import BuildContext, Maker, Param, register_head
from .block import mlp_hidden


class LinearHead(nn.Linear):
    """Dropout (training only) then a Linear classifier; stored as a plain Linear."""

    def __init__(self, dim: int, num_classes: int, bias: bool = True, dropout: float = 0.0):
        super().__init__(dim, num_classes, bias=bias)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.dropout(x, self.dropout, self.training), self.weight, self.bias)

    def first_linear(self) -> nn.Module:  # folding protocol
        return self


class MlpHead(nn.Module):
    """fc1 -> act -> norm -> dropout -> fc2 (ConvFormer / CAFormer)."""

    def __init__(self, dim: int, num_classes: int, ratio: float, act: Maker,
                 norm: Maker, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = mlp_hidden(ratio, dim)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act(hidden)
        self.norm = norm(hidden)
        self.head_drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.head_drop(self.norm(self.act(self.fc1(x)))))

    # folding protocol (head_drop is the identity in eval)
    def first_linear(self) -> nn.Module:
        return self.fc1

    def norm_sites(self) -> List[Tuple[str, nn.Module]]:
        return [("norm", self.fc2)]


@register_head("linear", Param("bias", bool, True), doc="a Linear classifier")
def _linear(ctx: BuildContext, num_classes: int, dropout: float, bias: bool) -> nn.Module:
    return LinearHead(ctx.dim, num_classes, bias, dropout)


def _mlp_check(ctx: BuildContext, args: dict) -> list:
    if mlp_hidden(args["ratio"], ctx.dim) < 1:
        return [("ratio", f"head mlp ratio {args['ratio']} leaves no hidden units for "
                 f"{ctx.dim} input channels", "use ratio >= 1 / channels")]
    return []


@register_head(
    "mlp",
    Param("ratio", float, 4.0, min=0.0, max=64.0, min_exclusive=True, doc="hidden / input width"),
    Param("act", "activation", "squared_relu"),
    # The official release uses torch's default eps 1e-5 here; timm's port uses 1e-6.
    Param("norm", "norm", call("layernorm", bias=True, eps=1e-5), doc="norm after the activation"),
    Param("bias", bool, True),
    doc="two-layer MLP head (ConvFormer / CAFormer)",
    check=_mlp_check,
)
def _mlp(ctx: BuildContext, num_classes: int, dropout: float, ratio: float, act: Maker,
         norm: Maker, bias: bool) -> nn.Module:
    return MlpHead(ctx.dim, num_classes, ratio, act, norm, bias, dropout)

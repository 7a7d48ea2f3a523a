"""Norms over channels-last tensors: layernorm (over C), modified_layernorm (over H, W, C).

Each norm declares the positions it is correct on (``positions=``): MAP, a (B, H, W, C)
feature map in the stages, and POOLED, the (B, C) vector the head sees. On POOLED every
built-in works per sample in eval mode: layernorm and modified_layernorm normalise each
sample's C values (GroupNorm(1) of a vector is LayerNorm over it); batchnorm uses its running
statistics (BatchNorm1d), and in training mode the batch's, as it does in the blocks.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MAP, POOLED, BuildContext, Param, register_norm
from . import aten_ops  # noqa: F401  (defines torch.ops.mfdsl.group_norm_1)
from .variants import speed_variant

_EPS = Param("eps", float, 1e-6, min=0.0, max=1.0, min_exclusive=True, doc="added to the variance")
_BIAS = Param("bias", bool, False, doc="learn a per-channel bias")


class LayerNorm(nn.Module):
    """LayerNorm over the last (channel) dim; weight always, bias optional."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)

    def without_affine(self) -> nn.Module:
        """This norm with its affine removed (folding protocol: the affine moved on)."""
        return NormalizeOnly(self.dim, self.eps, joint=False)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"


class ModifiedLayerNorm(LayerNorm):
    """The paper's "modified LayerNorm": statistics over (H, W, C) jointly (GroupNorm with
    one group), then a per-channel affine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return modified_layer_norm(x, self.weight, self.bias, self.eps)

    def without_affine(self) -> nn.Module:
        return NormalizeOnly(self.dim, self.eps, joint=True)


@speed_variant("modified_layernorm_groupnorm", ModifiedLayerNorm,
               doc="GroupNorm(1) on the channels-last NCHW view, affine inside the kernel")
class ModifiedLayerNormGroupNorm(ModifiedLayerNorm):
    """Why: GroupNorm(1) computes the same statistics with the per-channel affine fused in
    one kernel, forward and backward; its output is channels-last again, so the permutes
    are free. Measured on CPU eager: ~2x faster than layer_norm over (H, W, C) then * w."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_nhwc(x, self.weight, self.bias, self.eps)


@speed_variant("modified_layernorm_groupnorm_op", ModifiedLayerNorm,
               doc="the GroupNorm form as one opaque op: compiled code calls ATen's kernels")
class ModifiedLayerNormGroupNormOp(ModifiedLayerNorm):
    """Why: compiled on CPU, inductor replaces GroupNorm (and the plain form's layer_norm)
    by its own reductions, measured 2x slower than ATen's channels-last GroupNorm kernel
    in inference and 1.4x in training (stage-0 shape of poolformerv2_s12); as a custom op
    (mfdsl/layers/aten_ops.py) the ATen forward and backward run inside the graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_op_nhwc(x, self.weight, self.bias, self.eps)


def modified_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        eps: float) -> torch.Tensor:
    """Statistics over every dim but the batch ((H, W, C) on a feature map, C on the
    pooled (B, C) vector of a head; never across the batch), then the per-channel affine."""
    y = F.layer_norm(x, x.shape[1:], None, None, eps)
    y = y * weight
    if bias is not None:
        y = y + bias
    return y


def group_norm_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    eps: float) -> torch.Tensor:
    """:func:`modified_layer_norm` of a (B, H, W, C) ``x`` as GroupNorm(1) of its NCHW view."""
    if x.dim() != 4:
        return modified_layer_norm(x, weight, bias, eps)
    return F.group_norm(x.permute(0, 3, 1, 2), 1, weight, bias, eps).permute(0, 2, 3, 1)


def group_norm_op_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       eps: float) -> torch.Tensor:
    """:func:`group_norm_nhwc` through the opaque ``mfdsl::group_norm_1`` op."""
    if x.dim() != 4:
        return modified_layer_norm(x, weight, bias, eps)
    # in the parameters' dtype: a bf16 input (autocast) is normalised in float32, at
    # least as precisely as the reference's layer_norm, and the output is float32 as
    # the reference's (after its float32 affine). Called through torch.ops, which
    # TorchScript resolves (aten_ops.group_norm_1 is the same op).
    y = torch.ops.mfdsl.group_norm_1(x.permute(0, 3, 1, 2).to(weight.dtype), weight, bias,
                                     eps)[0]
    return y.permute(0, 2, 3, 1)


# The rank tests above are not part of a traced graph: torch.fx records these calls whole.
torch.fx.wrap("group_norm_nhwc")
torch.fx.wrap("group_norm_op_nhwc")


class NormalizeOnly(nn.Module):
    """A LayerNorm / modified LayerNorm whose affine was folded into the next layer."""

    def __init__(self, dim: int, eps: float, joint: bool) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.joint = joint  # True: statistics over (H, W, C) (modified LayerNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # joint: every dim but the batch, one sample at a time ((H, W, C) on a feature map,
        # C on a pooled vector; never across the batch)
        shape = tuple(x.shape[1:]) if self.joint else (self.dim,)
        return F.layer_norm(x, shape, None, None, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, joint={self.joint}"


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm over (B, H, W) per channel, for channels-last input.

    ``nn.BatchNorm2d.forward`` written out for the (B, C, H, W) view: TorchScript has no
    ``super()``, and torch.fx would trace its rank check, a test on a traced value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # running statistics are updated only in training, read only when not batch_stats
        update = not self.training or self.track_running_stats
        y = F.batch_norm(x.permute(0, 3, 1, 2),
                         self.running_mean if update else None,
                         self.running_var if update else None,
                         self.weight, self.bias, batch_stats, factor, self.eps)
        return y.permute(0, 2, 3, 1)


@register_norm("layernorm", _EPS, _BIAS, doc="LayerNorm over channels (weight; optional bias)",
               positions=(MAP, POOLED))
def _layernorm(ctx: BuildContext, eps: float, bias: bool) -> nn.Module:
    return LayerNorm(ctx.dim, eps=eps, bias=bias)


@register_norm(
    "modified_layernorm", _EPS, _BIAS,
    doc="the paper's modified LayerNorm over (H, W, C), per-channel weight",
    positions=(MAP, POOLED),
)
def _modified_layernorm(ctx: BuildContext, eps: float, bias: bool) -> nn.Module:
    return ModifiedLayerNorm(ctx.dim, eps=eps, bias=bias)


@register_norm(
    "batchnorm",
    Param("eps", float, 1e-5, min=0.0, max=1.0, min_exclusive=True),
    Param("momentum", float, 0.1, min=0.0, max=1.0),
    doc="BatchNorm per channel (for conv-style hybrids)",
    positions=(MAP, POOLED),
)
def _batchnorm(ctx: BuildContext, eps: float, momentum: float) -> nn.Module:
    if ctx.position == POOLED:  # a (B, C) vector: the same statistics and state dict, 1-d
        return nn.BatchNorm1d(ctx.dim, eps=eps, momentum=momentum)
    return BatchNorm(ctx.dim, eps=eps, momentum=momentum)


@register_norm("identity", doc="no normalisation", positions=(MAP, POOLED))
def _identity(ctx: BuildContext) -> Optional[nn.Module]:
    return nn.Identity()

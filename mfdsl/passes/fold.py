"""Inference folding passes: fold learned per-channel / scalar affine factors into the
weights of adjacent linear layers, so inference runs fewer elementwise passes.

Every pass takes a lowered :class:`~mfdsl.model.MetaFormer` (or any module tree made of
mfdsl's layers), rewrites it in place, and returns it together with nothing else; each
is usable alone. :func:`fold_for_inference` runs them all in a sound order.

Folded models are **inference-only**: folding changes the state dict (parameters merge
or disappear) and some folds are exact only in eval mode (drop path and dropout must be
identities). The passes put the model in eval mode, and :func:`fold_for_inference`
installs a guard that refuses a forward pass in training mode.

Exactness (each fold is an algebraic identity; results differ from the unfolded model
only by float rounding):

* StarReLU ``s * relu(h)^2 + b`` followed by a Linear ``W``: ``s`` goes into ``W``'s
  weight and ``b`` into its bias (``b * W.sum(1)``): exact (MLP ``fc1 -> act -> fc2``,
  sepconv ``act2 -> pwconv2``).
* StarReLU followed by sepconv's zero-padded depthwise conv: ``s`` goes into the conv
  weight (exact, zero padding stays zero). ``b`` is exact in a conv bias only when the
  conv has no padding (``b * sum(kernel)``); with padding the border outputs see fewer
  ``b`` terms, so ``b / s`` stays as an additive constant of the activation, before the
  conv (a zero ``s`` is left unfolded).
* layer_scale ``ls * branch(x)``: into the last linear layer of the branch (MLP ``fc2``,
  sepconv ``pwconv2``, attention ``proj``, dwconv mixer ``conv``); for the identity,
  pooling and random mixers (which commute with a per-channel scale) into ``norm1``'s
  affine instead. Exact.
* res_scale ``r * x``: the residual stream feeds the next norm and the next residual, and
  a per-channel ``r`` commutes with neither LayerNorm (it normalises across channels)
  nor the downsampling conv's pre-norm, so it cannot be folded in general. Only scales
  that are exactly 1 everywhere are removed (exact). The others are kept.
* norm affine ``LN(x) * w + b`` followed by a Linear ``W``: ``W' = W diag(w)``,
  ``b' = W b + b_W``: exact (norm2 -> mlp.fc1, norm1 -> sepconv.pwconv1 /
  attention.qkv, head norm -> head fc / fc1, MlpHead norm -> fc2 (dropout is the
  identity in eval), downsampling pre-norm -> conv when the norm has no bias: its zero
  padding stays zero).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.activations import SquaredReLU, StarReLU
from ..layers.block import Block, Downsample, Mlp, Scale
from ..layers.heads import LinearHead, MlpHead
from ..layers.mixers import Attention, DepthwiseConv, Pooling, RandomMixing, SepConv
from ..layers.norms import LayerNorm, ModifiedLayerNorm
from ..model import ClassifierHead


class ShiftedSquaredReLU(nn.Module):
    """relu(x)^2 + b: StarReLU after its scale was folded into the next layer's weight."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        return torch.addcmul(self.bias, r, r)


class NormalizeOnly(nn.Module):
    """A LayerNorm / modified LayerNorm whose affine was folded into the next layer."""

    def __init__(self, dim: int, eps: float, joint: bool) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.joint = joint  # True: statistics over (H, W, C) (modified LayerNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[-3:]) if self.joint else (self.dim,)
        return F.layer_norm(x, shape, None, None, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, joint={self.joint}"


# --- helpers --------------------------------------------------------------------------

def _prepare(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    return model.eval()


def _set_linear_bias(lin: nn.Module, bias: torch.Tensor) -> None:
    """Give ``lin`` (Linear or Conv2d) this bias, creating the parameter if it had none."""
    if lin.bias is None:
        lin.bias = nn.Parameter(bias.detach().clone(), requires_grad=lin.weight.requires_grad)
    else:
        lin.bias.data.copy_(bias)


def _fold_starrelu_into_linear(act: StarReLU, lin: nn.Linear) -> nn.Module:
    """lin(s * r + b) = (s W) r + (b W.sum(1) + b_lin): returns the activation to keep."""
    with torch.no_grad():
        s, b = act.scale.detach(), act.bias.detach()
        bias_term = b * lin.weight.sum(1)
        lin.weight.mul_(s)
        if lin.bias is not None or bool((bias_term != 0).any()):
            _set_linear_bias(lin, bias_term + (lin.bias if lin.bias is not None else 0))
    return SquaredReLU()


def _iter_blocks(model: nn.Module) -> List[Block]:
    return [m for m in model.modules() if isinstance(m, Block)]


# --- pass 1: StarReLU -----------------------------------------------------------------

def fold_starrelu(model: nn.Module) -> nn.Module:
    """Fold StarReLU's scale (and bias, where exact) into the following layer.

    MLP ``act -> fc2`` and sepconv ``act2 -> pwconv2``: scale and bias both fold.
    Sepconv ``act1 -> dwconv``: the scale folds into the conv weight; the bias folds
    into a conv bias only when the conv has no padding, otherwise it stays (see the
    module docstring). Removes 2 scalars per full fold, 1 per scale-only fold; a Linear
    that had no bias gains one when the StarReLU bias is non-zero.
    """
    model = _prepare(model)
    for m in list(model.modules()):
        if isinstance(m, Mlp) and type(m.act) is StarReLU:
            m.act = _fold_starrelu_into_linear(m.act, m.fc2)
        elif isinstance(m, SepConv):
            if type(m.act2) is StarReLU:
                m.act2 = _fold_starrelu_into_linear(m.act2, m.pwconv2)
            if type(m.act1) is StarReLU:
                m.act1 = _fold_starrelu_into_dwconv(m.act1, m.dwconv)
    return model


def _fold_starrelu_into_dwconv(act: StarReLU, conv: nn.Conv2d) -> nn.Module:
    """conv(s * r + b) = (s W) * r + conv(b): the scale always folds; ``b`` folds into a
    conv bias only when the conv has no padding (conv(b) = b * sum(W) at every position).
    With zero padding it stays before the conv as ``b / s`` (so that the scaled conv
    gives back b); a zero scale cannot be folded and the StarReLU is kept."""
    with torch.no_grad():
        s, b = act.scale.detach(), act.bias.detach()
        if bool((s == 0).any()):
            return act
        no_padding = conv.padding != "same" and all(p == 0 for p in tuple(conv.padding))
        bias_term = b * conv.weight.sum(dim=(1, 2, 3))  # from the unscaled weight
        conv.weight.mul_(s)
        if bool((b == 0).all()):
            return SquaredReLU()
        if no_padding:
            _set_linear_bias(conv, bias_term + (conv.bias if conv.bias is not None else 0))
            return SquaredReLU()
        # The rounding of r^2 + b/s, scaled back by s, is of the order of the rounding of
        # s r^2 + b itself: no precision is lost.
        return ShiftedSquaredReLU(b / s)


# --- pass 2: layer scale --------------------------------------------------------------

_COMMUTING_MIXERS = (nn.Identity, Pooling, RandomMixing)


def _last_linear(branch: nn.Module) -> Optional[nn.Module]:
    """The layer whose output *is* the branch output (per output channel), if any."""
    if isinstance(branch, Mlp):
        return branch.fc2
    if isinstance(branch, SepConv):
        return branch.pwconv2
    if isinstance(branch, Attention):
        return branch.proj
    if isinstance(branch, DepthwiseConv):
        return branch.conv
    return None


def _scale_output_channels(layer: nn.Module, s: torch.Tensor) -> None:
    shape = (-1,) + (1,) * (layer.weight.ndim - 1)
    layer.weight.mul_(s.reshape(shape))
    if layer.bias is not None:
        layer.bias.mul_(s)


def _fold_scale_into_norm(norm: nn.Module, s: torch.Tensor) -> bool:
    """ls * norm(x) with a per-channel affine norm: scale its weight and bias."""
    if isinstance(norm, (LayerNorm, ModifiedLayerNorm)) and norm.weight is not None:
        norm.weight.mul_(s)
        if norm.bias is not None:
            norm.bias.mul_(s)
        return True
    return False


def fold_layer_scale(model: nn.Module) -> nn.Module:
    """Fold each block's layer_scale1/2 into the last linear layer of its branch.

    For mixers that commute with a per-channel scale (identity, pooling, random) the
    scale folds into norm1's affine instead. Removes ``dim`` parameters per fold; scales
    that cannot be folded exactly (e.g. after an unknown plugin mixer) are kept.
    """
    model = _prepare(model)
    with torch.no_grad():
        for blk in _iter_blocks(model):
            if isinstance(blk.layer_scale1, Scale):
                s = blk.layer_scale1.scale.detach()
                target = _last_linear(blk.token_mixer)
                if target is not None:
                    _scale_output_channels(target, s)
                    blk.layer_scale1 = nn.Identity()
                elif isinstance(blk.token_mixer, _COMMUTING_MIXERS) and \
                        _fold_scale_into_norm(blk.norm1, s):
                    blk.layer_scale1 = nn.Identity()
            if isinstance(blk.layer_scale2, Scale):
                target = _last_linear(blk.mlp)
                if target is not None:
                    _scale_output_channels(target, blk.layer_scale2.scale.detach())
                    blk.layer_scale2 = nn.Identity()
    return model


# --- pass 3: residual scale -----------------------------------------------------------

def fold_res_scale(model: nn.Module) -> nn.Module:
    """Remove res_scale1/2 that are exactly 1 in every channel (exact).

    A general per-channel res_scale cannot be folded: the residual stream it scales
    feeds the next LayerNorm, which normalises across channels (so a per-channel factor
    does not pass through it) and the next residual sum. Those scales are kept.
    """
    model = _prepare(model)
    for blk in _iter_blocks(model):
        for name in ("res_scale1", "res_scale2"):
            sc = getattr(blk, name)
            if isinstance(sc, Scale) and bool((sc.scale.detach() == 1).all()):
                setattr(blk, name, nn.Identity())
    return model


# --- pass 4: norm affine --------------------------------------------------------------

def _first_linear(branch: nn.Module) -> Optional[nn.Module]:
    """The layer that consumes the norm's output position-wise, if the branch starts
    with one."""
    if isinstance(branch, Mlp):
        return branch.fc1
    if isinstance(branch, SepConv):
        return branch.pwconv1
    if isinstance(branch, Attention):
        return branch.qkv
    if isinstance(branch, (LinearHead, nn.Linear)):
        return branch
    if isinstance(branch, MlpHead):
        return branch.fc1
    return None


def _fold_affine_into_linear(norm: nn.Module, lin: nn.Linear) -> nn.Module:
    """lin(n * w + b) = (W diag(w)) n + (W b + b_lin). Returns the plain norm to keep."""
    w = norm.weight.detach()
    b = norm.bias.detach() if norm.bias is not None else None
    with torch.no_grad():
        if b is not None:
            term = lin.weight @ b
            if lin.bias is not None or bool((term != 0).any()):
                _set_linear_bias(lin, term + (lin.bias if lin.bias is not None else 0))
        lin.weight.mul_(w.reshape(1, -1))
    return NormalizeOnly(norm.dim, norm.eps, joint=isinstance(norm, ModifiedLayerNorm))


def _affine_norm(norm: nn.Module) -> bool:
    return isinstance(norm, (LayerNorm, ModifiedLayerNorm)) and norm.weight is not None


def fold_norm_affine(model: nn.Module) -> nn.Module:
    """Fold LayerNorm / modified-LayerNorm weight and bias into the following layer.

    norm1 -> sepconv.pwconv1 / attention.qkv, norm2 -> mlp.fc1, head norm -> the
    classifier's first Linear, MlpHead norm -> fc2, downsampling pre-norm (no bias) ->
    the strided conv. Removes the norm's ``dim`` (+ ``dim`` bias) parameters per fold; a
    Linear without bias gains one if the norm had a non-zero bias.
    """
    model = _prepare(model)
    for blk in _iter_blocks(model):
        lin = _first_linear(blk.token_mixer)
        if lin is not None and _affine_norm(blk.norm1):
            blk.norm1 = _fold_affine_into_linear(blk.norm1, lin)
        lin = _first_linear(blk.mlp)
        if lin is not None and _affine_norm(blk.norm2):
            blk.norm2 = _fold_affine_into_linear(blk.norm2, lin)
    for m in list(model.modules()):
        if isinstance(m, ClassifierHead) and _affine_norm(m.norm):
            lin = _first_linear(m.fc)
            if lin is not None:
                m.norm = _fold_affine_into_linear(m.norm, lin)
        if isinstance(m, MlpHead) and _affine_norm(m.norm):
            m.norm = _fold_affine_into_linear(m.norm, m.fc2)
        if isinstance(m, Downsample) and hasattr(m, "pre_norm") and \
                isinstance(m.pre_norm, LayerNorm) and m.pre_norm.bias is None:
            with torch.no_grad():
                # conv(x * w) with zero padding = conv_{W * w[in]}(x): padding stays zero.
                m.conv.weight.mul_(m.pre_norm.weight.detach().reshape(1, -1, 1, 1))
            m.pre_norm = NormalizeOnly(m.pre_norm.dim, m.pre_norm.eps, joint=False)
    return model


# --- all passes -----------------------------------------------------------------------

PASSES: Tuple[Tuple[str, Callable[[nn.Module], nn.Module]], ...] = (
    ("starrelu", fold_starrelu),
    ("layer_scale", fold_layer_scale),
    ("res_scale", fold_res_scale),
    ("norm_affine", fold_norm_affine),
)


def _refuse_training(module: nn.Module, args: tuple) -> None:
    if module.training:
        raise RuntimeError(
            "this model was folded for inference (mfdsl.passes.fold_for_inference); its "
            "parameters no longer train like the original's. Call .eval(), or fold a copy "
            "and train the unfolded model."
        )


def fold_for_inference(model: nn.Module) -> nn.Module:
    """Run every folding pass (in place) and return the model, in eval mode.

    The model is inference-only afterwards: a forward pass in training mode raises.
    ``model.folded`` lists the passes applied and the parameter counts before / after.
    """
    model = _prepare(model)
    before = sum(p.numel() for p in model.parameters())
    for _, fn in PASSES:
        fn(model)
    after = sum(p.numel() for p in model.parameters())
    if not getattr(model, "_mfdsl_fold_guard", False):
        model.register_forward_pre_hook(_refuse_training)
        model._mfdsl_fold_guard = True
    model.folded = {
        "passes": [n for n, _ in PASSES], "params_before": before, "params_after": after,
    }
    return model

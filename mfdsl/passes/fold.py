"""Inference folding passes: fold learned per-channel / scalar affine factors into the
weights of adjacent linear layers, so inference runs fewer elementwise passes.

Beyond the block's own structure (``Block``, ``Scale``) and the activations they fold
(``StarReLU``, ``SquaredReLU``), the passes know no layer class: mixers, norms and heads say
what they need through a small protocol (any subset; a layer without it is simply not
folded through, and the report says so):

* ``first_linear()``: the Linear that consumes the layer's input position by position
  first (a norm's affine folds into it); ``last_linear()``: the Linear / Conv2d whose
  output channels are the layer's output (a layer scale folds into it);
* ``commutes_with_channel_scale = True``: ``m(s * x) = s * m(x)`` for a per-channel ``s``
  (a layer scale moves in front of it, into the norm's affine);
* ``activation_sites()``: ``[(attribute, next layer)]``, activations that feed a layer
  (a StarReLU folds into a Linear fully, into a zero-padded conv partly);
* ``norm_sites()``: ``[(norm attribute, consumer)]`` (the consumer's ``first_linear()``
  or the consumer itself if it is a Linear / Conv2d);
* norms: ``without_affine()`` gives the norm to keep once its affine moved on.

Every StarReLU, layer scale, res scale and norm affine that stays is listed in the
report (``model.folded["kept"]``) with the reason, so a new mixer is folded or visibly
not folded, never silently skipped.

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

from typing import Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.activations import SquaredReLU, StarReLU, starrelu_into_linear
from ..layers.block import Block, Scale
from ..layers.norms import NormalizeOnly  # noqa: F401  (re-exported: a folded norm)
from ..layers.adapters import merge_adapters
from ..layers.variants import select_variants

Report = Optional[List[str]]


class ShiftedSquaredReLU(nn.Module):
    """relu(x)^2 + b: StarReLU after its scale was folded into the next layer's weight."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        return torch.addcmul(self.bias, r, r)


# --- helpers --------------------------------------------------------------------------

def _prepare(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    # Fused speed variants read the parameters a fold rewrites: fold the reference forms.
    select_variants(model, ())
    return model.eval()


def _keep(report: Report, what: str) -> None:
    if report is not None:
        report.append(what)


def _names(model: nn.Module):
    return {id(m): (n or "(model)") for n, m in model.named_modules()}


def _set_linear_bias(lin: nn.Module, bias: torch.Tensor) -> None:
    """Give ``lin`` (Linear or Conv2d) this bias, creating the parameter if it had none."""
    if lin.bias is None:
        lin.bias = nn.Parameter(bias.detach().clone(), requires_grad=lin.weight.requires_grad)
    else:
        lin.bias.data.copy_(bias)


def _first_linear(consumer: Optional[nn.Module]) -> Optional[nn.Module]:
    if isinstance(consumer, (nn.Linear, nn.Conv2d)):
        return consumer
    get = getattr(consumer, "first_linear", None)
    return get() if callable(get) else None


def _last_linear(branch: nn.Module) -> Optional[nn.Module]:
    get = getattr(branch, "last_linear", None)
    return get() if callable(get) else None


def _commutes(m: nn.Module) -> bool:
    return isinstance(m, nn.Identity) or bool(getattr(m, "commutes_with_channel_scale", False))


def _affine_norm(norm: nn.Module) -> bool:
    return callable(getattr(norm, "without_affine", None)) and \
        getattr(norm, "weight", None) is not None


# --- pass 1: StarReLU -----------------------------------------------------------------

def _fold_starrelu_into_linear(act: StarReLU, lin: nn.Linear) -> nn.Module:
    """lin(s * r + b) = (s W) r + (b W.sum(1) + b_lin): returns the activation to keep."""
    with torch.no_grad():
        weight, bias = starrelu_into_linear(act.scale, act.bias, lin.weight, lin.bias)
        lin.weight.copy_(weight)
        if lin.bias is not None or bool((bias != 0).any()):
            _set_linear_bias(lin, bias)
    return SquaredReLU()


def _fold_starrelu_into_conv(act: StarReLU, conv: nn.Conv2d) -> nn.Module:
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


def _sites(model: nn.Module, protocol: str) -> Iterator[Tuple[nn.Module, str, nn.Module]]:
    """(layer, attribute, what consumes it) for every site a layer lists through
    ``protocol`` (``activation_sites`` / ``norm_sites``); a snapshot, so passes may replace
    attributes while iterating."""
    for m in list(model.modules()):
        sites = getattr(m, protocol, None)
        if callable(sites):
            for attr, consumer in sites():
                yield m, attr, consumer


def fold_starrelu(model: nn.Module, report: Report = None) -> nn.Module:
    """Fold StarReLU's scale (and bias, where exact) into the layer it feeds.

    Into a Linear (MLP ``act -> fc2``, sepconv ``act2 -> pwconv2``): scale and bias both
    fold. Into a zero-padded conv (sepconv ``act1 -> dwconv``): the scale folds; the
    bias folds into a conv bias only without padding, otherwise it stays (see the module
    docstring). A StarReLU no layer lists in ``activation_sites()`` is kept and reported.
    """
    model = _prepare(model)
    names = _names(model)
    folded = set()
    for m, attr, nxt in _sites(model, "activation_sites"):
        act = getattr(m, attr)
        if not isinstance(act, StarReLU):
            continue
        if isinstance(nxt, nn.Linear):
            new = _fold_starrelu_into_linear(act, nxt)
        elif isinstance(nxt, nn.Conv2d):
            new = _fold_starrelu_into_conv(act, nxt)
        else:
            continue
        if new is not act:
            setattr(m, attr, new)
            folded.add(id(act))
    for m in model.modules():
        if isinstance(m, StarReLU) and id(m) not in folded:
            _keep(report, f"{names[id(m)]} (StarReLU): kept, no foldable layer after it")
    return model


# --- pass 2: layer scale --------------------------------------------------------------

def _scale_output_channels(layer: nn.Module, s: torch.Tensor) -> None:
    shape = (-1,) + (1,) * (layer.weight.ndim - 1)
    layer.weight.mul_(s.reshape(shape))
    if layer.bias is not None:
        layer.bias.mul_(s)


def _scale_norm_affine(norm: nn.Module, s: torch.Tensor) -> bool:
    """ls * norm(x) with a per-channel affine norm: scale its weight and bias."""
    if not _affine_norm(norm):
        return False
    norm.weight.mul_(s)
    if getattr(norm, "bias", None) is not None:
        norm.bias.mul_(s)
    return True


def fold_layer_scale(model: nn.Module, report: Report = None) -> nn.Module:
    """Fold each block's layer_scale1/2 into the ``last_linear()`` of its branch.

    For a mixer that commutes with a per-channel scale (identity, pooling, random,
    global filter) the scale folds into norm1's affine instead. Removes ``dim``
    parameters per fold; a scale that cannot be folded exactly is kept and reported.
    """
    model = _prepare(model)
    names = _names(model)
    with torch.no_grad():
        for blk in [m for m in model.modules() if isinstance(m, Block)]:
            for ls_name, branch, norm in (("layer_scale1", blk.token_mixer, blk.norm1),
                                          ("layer_scale2", blk.mlp, blk.norm2)):
                ls = getattr(blk, ls_name)
                if not isinstance(ls, Scale):
                    continue
                s = ls.scale.detach()
                target = _last_linear(branch)
                if target is not None:
                    _scale_output_channels(target, s)
                elif not (_commutes(branch) and _scale_norm_affine(norm, s)):
                    _keep(report, f"{names[id(blk)]}.{ls_name}: kept, "
                                  f"{type(branch).__name__} has no last_linear() and "
                                  "does not commute with a channel scale into an affine norm")
                    continue
                setattr(blk, ls_name, nn.Identity())
    return model


# --- pass 3: residual scale -----------------------------------------------------------

def fold_res_scale(model: nn.Module, report: Report = None) -> nn.Module:
    """Remove res_scale1/2 that are exactly 1 in every channel (exact).

    A general per-channel res_scale cannot be folded: the residual stream it scales
    feeds the next LayerNorm, which normalises across channels (so a per-channel factor
    does not pass through it) and the next residual sum. Those scales are kept.
    """
    model = _prepare(model)
    names = _names(model)
    for blk in [m for m in model.modules() if isinstance(m, Block)]:
        for name in ("res_scale1", "res_scale2"):
            sc = getattr(blk, name)
            if not isinstance(sc, Scale):
                continue
            if bool((sc.scale.detach() == 1).all()):
                setattr(blk, name, nn.Identity())
            else:
                _keep(report, f"{names[id(blk)]}.{name}: kept, a per-channel residual scale "
                              "does not pass through the next norm")
    return model


# --- pass 4: norm affine --------------------------------------------------------------

def _fold_affine_into(norm: nn.Module, lin: nn.Module) -> Optional[nn.Module]:
    """lin(n * w + b) = (W diag(w)) n + (W b + b_lin): returns the norm to keep, or None
    if this layer cannot take it exactly."""
    w = norm.weight.detach()
    b = norm.bias.detach() if getattr(norm, "bias", None) is not None else None
    with torch.no_grad():
        if isinstance(lin, nn.Linear):
            if b is not None:
                term = lin.weight @ b
                if lin.bias is not None or bool((term != 0).any()):
                    _set_linear_bias(lin, term + (lin.bias if lin.bias is not None else 0))
            lin.weight.mul_(w.reshape(1, -1))
            return norm.without_affine()
        if isinstance(lin, nn.Conv2d) and lin.groups == 1 and b is None:
            # conv(x * w) with zero padding = conv_{W * w[in]}(x): padding stays zero.
            lin.weight.mul_(w.reshape(1, -1, 1, 1))
            return norm.without_affine()
    return None


def fold_norm_affine(model: nn.Module, report: Report = None) -> nn.Module:
    """Fold LayerNorm / modified-LayerNorm weight and bias into the layer that consumes
    the normalised tensor (every ``norm_sites()`` pair: norm1 -> mixer, norm2 -> MLP,
    head norm -> classifier, MlpHead norm -> fc2, downsampling pre-norm without bias ->
    the strided conv). A Linear without bias gains one if the norm had a non-zero bias.
    Affine norms that stay are reported (e.g. the stem's post-norm, which feeds the
    residual stream).
    """
    model = _prepare(model)
    names = _names(model)
    folded = set()
    for m, attr, consumer in _sites(model, "norm_sites"):
        norm = getattr(m, attr)
        lin = _first_linear(consumer)
        if lin is None or not _affine_norm(norm):
            continue
        kept = _fold_affine_into(norm, lin)
        if kept is not None:
            setattr(m, attr, kept)
            folded.add(id(norm))
    for m in model.modules():
        if _affine_norm(m) and id(m) not in folded:
            _keep(report, f"{names[id(m)]} ({type(m).__name__}): affine kept, "
                          "no linear layer consumes it directly")
    return model


# --- all passes -----------------------------------------------------------------------

PASSES: Tuple[Tuple[str, Callable[..., nn.Module]], ...] = (
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
    ``model.folded`` lists the passes applied, the parameter counts before / after, and
    ``kept``: what could not be folded, and why.
    """
    before = sum(p.numel() for p in model.parameters())
    # Adapters first: a weight parametrization does not survive a variant's class swap.
    merged = merge_adapters(model) if isinstance(model, nn.Module) else []
    model = _prepare(model)
    kept: List[str] = []
    for _, fn in PASSES:
        fn(model, kept)
    after = sum(p.numel() for p in model.parameters())
    if not getattr(model, "_mfdsl_fold_guard", False):
        model.register_forward_pre_hook(_refuse_training)
        model._mfdsl_fold_guard = True
    model.folded = {
        "passes": (["adapters"] if merged else []) + [n for n, _ in PASSES],
        "params_before": before, "params_after": after,
        "kept": kept,
    }
    return model

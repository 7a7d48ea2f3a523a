"""Optimizer with the recipe's weight-decay exclusions and its arguments as resolved."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from ..ir import RecipeSpec
from .errors import RunError


def param_groups(model: nn.Module, weight_decay: float,
                 lr_scales: Optional[Dict[str, float]] = None) -> List[Dict[str, Any]]:
    """Decayed matrices/kernels and undecayed 1-D params, per lr scale when
    ``lr_scales`` (parameter name -> scale, layer-wise decay) is given.

    1-D params are norm weights and biases, layer/residual scales and StarReLU's scalars;
    frozen params (RandomMixing's matrix, what a fine-tune freezes) are left out of the
    optimizer entirely. With scales, each group holds ``lr_scale`` (the schedule's lr is
    multiplied by it).
    """
    groups: Dict[Any, Dict[str, Any]] = {}
    if lr_scales is None:  # always the same two groups, in this order
        groups = {True: dict(params=[], weight_decay=weight_decay),
                  False: dict(params=[], weight_decay=0.0)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1
        if lr_scales is None:
            groups[decay]["params"].append(p)
            continue
        scale = lr_scales[name]
        groups.setdefault((scale, decay), dict(
            params=[], weight_decay=weight_decay if decay else 0.0, lr_scale=scale)
        )["params"].append(p)
    return list(groups.values())


def _optimizer_class(name: str) -> type:
    if name == "adamw":
        return torch.optim.AdamW
    if name == "lamb":
        # timm's Lamb's update: one C kernel per group on the CPU, a fixed number of
        # multi-tensor ops elsewhere
        from .lamb import FusedLamb

        return FusedLamb
    if name == "sgd":
        return torch.optim.SGD
    raise RunError(f"unknown optimizer '{name}' (adamw, lamb or sgd)")


def default_eps(name: str) -> float:
    """The eps the optimizer class uses when none is passed (what the official train.py
    leaves in place: timm's Lamb 1e-6, as FusedLamb, torch's AdamW 1e-8), read from the
    class itself."""
    import inspect

    return float(inspect.signature(_optimizer_class(name).__init__).parameters["eps"].default)


def optimizer_args(recipe: RecipeSpec, lr: float) -> Dict[str, Any]:
    """Every argument the optimizer is built with besides the parameter groups (the weight
    decay is per group: the recipe's on matrices/kernels, 0 on 1-D params)."""
    name = recipe.optimizer.lower()
    _optimizer_class(name)  # an unknown name is refused here
    if name == "sgd":
        return dict(lr=lr, momentum=recipe.momentum, nesterov=True,
                    weight_decay=recipe.weight_decay)
    eps = recipe.opt_eps if recipe.opt_eps is not None else default_eps(name)
    args: Dict[str, Any] = dict(lr=lr, betas=tuple(float(b) for b in recipe.betas), eps=eps,
                                weight_decay=recipe.weight_decay)
    if name == "lamb":
        import inspect

        # LAMB (timm's, and FusedLamb with its defaults) clips the global gradient norm
        # inside the optimizer (max_grad_norm) and corrects bias by default; named here so
        # a plan shows every argument.
        params = inspect.signature(_optimizer_class(name).__init__).parameters
        for extra in ("bias_correction", "max_grad_norm", "trust_clip", "always_adapt"):
            if extra in params:
                args[extra] = params[extra].default
    return args


def create_optimizer(model: nn.Module, recipe: RecipeSpec, lr: float,
                     lr_scales: Optional[Dict[str, float]] = None) -> torch.optim.Optimizer:
    """AdamW (torch, fused), LAMB (FusedLamb: timm's update; runner/lamb.py) or SGD with
    Nesterov momentum (torch; its default foreach path on CUDA, the per-tensor loop on
    CPU), per the recipe; ``lr_scales``: see :func:`param_groups`."""
    groups = param_groups(model, recipe.weight_decay, lr_scales)
    args = optimizer_args(recipe, lr)
    args.pop("weight_decay")  # per group
    if recipe.optimizer.lower() == "adamw":
        # Fused: one kernel per step, and torch's found_inf path skips a non-finite step
        # on the device (mfdsl.runner.step) with no host read. Same update as the loop form.
        args["fused"] = True
    return _optimizer_class(recipe.optimizer.lower())(groups, **args)

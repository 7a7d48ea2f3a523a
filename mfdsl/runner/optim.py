"""Optimizer with the recipe's weight-decay exclusions, and the per-step LR schedule."""
from __future__ import annotations

import math
from typing import Any, Dict, List

import torch
import torch.nn as nn

from ..ir import RecipeSpec
from .errors import RunError


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Two groups: decayed matrices/kernels, and undecayed 1-D params.

    1-D params are norm weights and biases, layer/residual scales and StarReLU's scalars;
    frozen params (RandomMixing's matrix) are left out of the optimizer entirely.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay),
            dict(params=no_decay, weight_decay=0.0)]


def create_optimizer(model: nn.Module, recipe: RecipeSpec, lr: float) -> torch.optim.Optimizer:
    """AdamW (torch), LAMB (timm) or SGD with Nesterov momentum (torch), per the recipe."""
    groups = param_groups(model, recipe.weight_decay)
    betas = tuple(float(b) for b in recipe.betas)
    name = recipe.optimizer.lower()
    if name == "adamw":
        # Fused: one kernel per step, and torch's found_inf path skips a non-finite step
        # on the device (mfdsl.runner.step) with no host read.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=recipe.opt_eps, fused=True)
    if name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=lr, betas=betas, eps=recipe.opt_eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=True)
    raise RunError(f"unknown optimizer '{recipe.optimizer}' (adamw, lamb or sgd)")


class LRSchedule:
    """Per optimizer step: linear warmup warmup_lr -> lr, then cosine lr -> min_lr
    (or constant lr). A pure function of the step, so resuming needs only the step."""

    def __init__(self, kind: str, base_lr: float, total_steps: int, warmup_steps: int,
                 warmup_lr: float, min_lr: float) -> None:
        if kind not in ("cosine", "constant"):
            raise RunError(f"unknown schedule '{kind}' (cosine or constant)")
        self.kind = kind
        self.base_lr = base_lr
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(max(0, warmup_steps), self.total_steps)
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr

    def lr_at(self, step: int) -> float:
        """The lr used for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        span = self.total_steps - self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / max(1, span))
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> Dict[str, Any]:
        return dict(kind=self.kind, base_lr=self.base_lr, total_steps=self.total_steps,
                    warmup_steps=self.warmup_steps, warmup_lr=self.warmup_lr, min_lr=self.min_lr)

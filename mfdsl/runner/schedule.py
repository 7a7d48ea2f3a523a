"""The learning rate at every optimizer step, as the recipe states it.

The official MetaFormer training (timm's ``CosineLRScheduler`` with ``t_in_epochs=True``,
``warmup_prefix=False``, stepped once per epoch) is ``sched cosine``, ``sched_unit epoch``,
``warmup_mode inside`` plus ``cooldown_epochs 10``: the warmup epochs are the cosine's first
epochs (the cosine's clock starts at 0 with the warmup), the lr changes only at epoch
boundaries, and the cooldown epochs after ``epochs`` run at min_lr. ``sched_unit step``
evaluates the same curve at every optimizer step (a smooth per-step cosine);
``warmup_mode prefix`` runs the warmup first and then a full cosine over the remaining
epochs. ``sched constant`` is the official fine-tune's ``--sched None``: lr throughout.

A schedule is a pure function of the optimizer step, so resuming needs only the step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional

import torch

from ..ir import RecipeSpec
from .errors import RunError


@dataclass(frozen=True)
class Schedule:
    """lr per optimizer step. Times are in epochs; one epoch is ``steps_per_epoch`` steps."""

    kind: str  # cosine | constant
    unit: str  # epoch | step
    warmup_mode: str  # inside | prefix
    base_lr: float
    min_lr: float
    warmup_lr: float
    epochs: int
    warmup_epochs: int
    cooldown_epochs: int
    steps_per_epoch: int
    # A run stopped early by --max-steps keeps the schedule's shape: step s of the short
    # run uses the lr of step floor(s * planned / max_steps) of the planned one.
    max_steps: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "constant"):
            raise RunError(f"unknown schedule '{self.kind}' (cosine or constant)")
        if self.unit not in ("epoch", "step"):
            raise RunError(f"unknown schedule unit '{self.unit}' (epoch or step)")
        if self.warmup_mode not in ("inside", "prefix"):
            raise RunError(f"unknown warmup mode '{self.warmup_mode}' (inside or prefix)")
        if self.steps_per_epoch < 1:
            raise RunError("a schedule needs at least one step per epoch")

    @property
    def total_epochs(self) -> int:
        """Epochs run: the schedule's epochs plus the cooldown."""
        return self.epochs + self.cooldown_epochs

    @property
    def planned_steps(self) -> int:
        return self.total_epochs * self.steps_per_epoch

    @property
    def total_steps(self) -> int:
        if self.max_steps is not None and self.max_steps < self.planned_steps:
            return self.max_steps
        return self.planned_steps

    @property
    def warmup_steps(self) -> int:
        """Optimizer steps spent warming up (in the short run, if --max-steps cut it)."""
        w = self.warmup_epochs * self.steps_per_epoch
        if self.total_steps == self.planned_steps:
            return w
        # the first step s whose planned step s * planned // total reaches w
        return min(self.total_steps, -(-w * self.total_steps // self.planned_steps))

    def _planned(self, step: int) -> int:
        if self.total_steps == self.planned_steps:
            return step
        return step * self.planned_steps // self.total_steps

    def lr_at(self, step: int) -> float:
        """The lr used for optimizer step ``step`` (0-based)."""
        step = self._planned(step)
        t = (step // self.steps_per_epoch if self.unit == "epoch"
             else step / self.steps_per_epoch)
        return self.lr_at_epoch(t)

    def lr_at_epoch(self, t: float) -> float:
        """The lr at time ``t`` in epochs (an integer for the epoch-stepped schedule)."""
        w = self.warmup_epochs
        if self.kind == "constant":
            if t < w:
                return self.warmup_lr + t * (self.base_lr - self.warmup_lr) / w
            return self.base_lr
        if t < w:
            # timm: warmup_lr_init + t * (lr - warmup_lr_init) / warmup_t
            return self.warmup_lr + t * ((self.base_lr - self.warmup_lr) / w)
        if self.warmup_mode == "prefix":
            t, span = t - w, self.epochs - w
        else:
            span = self.epochs
        if span <= 0 or t >= span:
            return self.min_lr  # the cooldown (and the cosine's end)
        # The order of timm's CosineLRScheduler._get_lr, so the floats agree.
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (
            1 + math.cos(math.pi * t / span))

    def lrs(self) -> List[float]:
        """The lr of every optimizer step, in order (``total_steps`` floats: ask only when
        they are wanted; :meth:`peak` and :meth:`milestones` are bounded)."""
        return [self.lr_at(s) for s in range(self.total_steps)]

    def peak(self) -> float:
        """The largest lr of the run. The warmup rises linearly and the cosine (or constant)
        after it never rises, so the peak is at the warmup's last step or the first after."""
        w = self.warmup_steps
        steps = {0, max(0, w - 1), min(w, self.total_steps - 1)}
        return max(self.lr_at(s) for s in steps)

    def milestones(self) -> List[Dict[str, Any]]:
        """The lr at the first step of each epoch and at the warmup's end: one entry per
        epoch, so a 3000-epoch plan stays small whatever the steps per epoch."""
        marks = sorted({min(e * self.steps_per_epoch, self.total_steps - 1)
                        for e in range(self.total_epochs)} | {min(self.warmup_steps,
                                                                  self.total_steps - 1)})
        return [{"step": s, "lr": self.lr_at(s)} for s in marks if s < self.total_steps]

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for g in optimizer.param_groups:  # lr_scale: layer-wise decay (runner.optim)
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Dict[str, Any]) -> "Schedule":
        """The schedule a plan's ``schedule`` record (``plan.json``) describes."""
        return cls(**{f.name: record[f.name] for f in fields(cls)})

    def describe(self) -> str:
        if self.kind == "constant":
            text = f"constant lr {self.base_lr:.3g}"
        else:
            text = (f"cosine {self.base_lr:.3g} -> {self.min_lr:.3g} over {self.epochs} epochs, "
                    f"stepped per {'epoch' if self.unit == 'epoch' else 'optimizer step'}")
        if self.warmup_epochs:
            text += (f", {self.warmup_epochs} warmup epochs from {self.warmup_lr:.3g} "
                     f"({self.warmup_mode})")
        if self.cooldown_epochs:
            text += f", {self.cooldown_epochs} cooldown epochs at {self.min_lr:.3g}"
        return text


def schedule_for(recipe: RecipeSpec, base_lr: float, steps_per_epoch: int,
                 max_steps: Optional[int] = None) -> Schedule:
    """The recipe's schedule for a run of ``steps_per_epoch`` optimizer steps per epoch."""
    return Schedule(kind=recipe.sched, unit=recipe.sched_unit, warmup_mode=recipe.warmup_mode,
                    base_lr=base_lr, min_lr=recipe.min_lr, warmup_lr=recipe.warmup_lr,
                    epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
                    cooldown_epochs=recipe.cooldown_epochs, steps_per_epoch=steps_per_epoch,
                    max_steps=max_steps)

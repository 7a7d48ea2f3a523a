"""How a run's batch sizes and lr are derived from the recipe and the options, and the
recipe's command-line overrides applied (the options themselves: :mod:`mfdsl.run_options`)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Set

from ..ir import ModelSpec, RecipeSpec, with_overrides
from .errors import RunError

# When only the global batch is known, no device gets more than this per micro-batch.
DEFAULT_MAX_PER_DEVICE = 128
# The embedded dataset has 1500 training images: a paper recipe's 4096 would not fit.
EMBEDDED_MAX_BATCH = 64


@dataclass(frozen=True)
class BatchPlan:
    """global_batch = per_device * accum * world_size."""

    global_batch: int
    per_device: int
    accum: int
    world_size: int

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.per_device} per device x "
                f"{self.accum} accumulation x {self.world_size} process(es)")


def plan_batches(world_size: int, recipe_batch: int, global_batch: Optional[int] = None,
                 per_device: Optional[int] = None, accum: Optional[int] = None,
                 max_per_device: int = DEFAULT_MAX_PER_DEVICE) -> BatchPlan:
    """Derive the missing one of global batch / per-device batch / accumulation steps.

    The global batch defaults to the recipe's. Raises RunError when the given numbers do not
    multiply out.
    """
    for name, v in (("--batch-size", global_batch), ("--per-device-batch", per_device),
                    ("--accum", accum)):
        if v is not None and v < 1:
            raise RunError(f"{name} must be >= 1, got {v}")
    if per_device is not None and accum is not None:
        derived = per_device * accum * world_size
        if global_batch is not None and global_batch != derived:
            raise RunError(f"--batch-size {global_batch} does not equal --per-device-batch "
                           f"{per_device} x --accum {accum} x {world_size} process(es) = {derived}")
        return BatchPlan(derived, per_device, accum, world_size)
    g = global_batch if global_batch is not None else recipe_batch
    if per_device is not None:
        if g % (per_device * world_size):
            raise RunError(f"global batch {g} is not a multiple of --per-device-batch {per_device}"
                           f" x {world_size} process(es); set --batch-size or --accum")
        return BatchPlan(g, per_device, g // (per_device * world_size), world_size)
    if accum is not None:
        if g % (accum * world_size):
            raise RunError(f"global batch {g} is not a multiple of --accum {accum} x "
                           f"{world_size} process(es)")
        return BatchPlan(g, g // (accum * world_size), accum, world_size)
    if g % world_size:
        raise RunError(f"global batch {g} is not a multiple of the {world_size} processes")
    # Smallest accumulation that keeps each micro-batch within max_per_device.
    per_rank = g // world_size
    for a in range(max(1, math.ceil(per_rank / max_per_device)), per_rank + 1):
        if per_rank % a == 0:
            return BatchPlan(g, per_rank // a, a, world_size)
    return BatchPlan(g, 1, per_rank, world_size)


def scaled_lr(recipe: RecipeSpec, global_batch: int) -> float:
    """The recipe's lr is stated for ``lr_batch`` images; scale it linearly to the real batch."""
    return recipe.lr * global_batch / recipe.lr_batch


_RECIPE_FIELDS = {f.name for f in dataclasses.fields(RecipeSpec)} - {"locs"}


def recipe_field_names() -> Set[str]:
    """The names of the recipe's fields (what ``recipe_overrides`` may name)."""
    return set(_RECIPE_FIELDS)


def apply_recipe_overrides(spec: ModelSpec, overrides: Dict[str, Any]) -> ModelSpec:
    """A copy of ``spec`` whose recipe has the CLI's values (a default recipe if it had none)."""
    unknown = set(overrides) - _RECIPE_FIELDS
    if unknown:
        raise RunError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
    recipe = spec.recipe if spec.recipe is not None else RecipeSpec()
    if overrides:
        recipe = with_overrides(recipe, **overrides)
    return with_overrides(spec, recipe=recipe)


def recipe_as_dict(recipe: RecipeSpec) -> Dict[str, Any]:
    out = {}
    for f in dataclasses.fields(recipe):
        if f.name == "locs":
            continue
        v = getattr(recipe, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out

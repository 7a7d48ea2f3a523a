"""The short schedule a sweep trains each candidate with, derived from its recipe.

With ``E`` sweep epochs and a recipe of ``epochs`` epochs: epochs become ``E``, and
``warmup_epochs`` and ``cooldown_epochs`` are scaled by ``E / epochs`` and rounded half up,
at least 0 (warmup also at most ``E``). Everything else (lr, batch, augmentation) is the
recipe's.
"""
from __future__ import annotations

import math
from typing import Any, Dict


def scaled(n: int, e: int, epochs: int) -> int:
    """``n * e / epochs`` rounded half up, at least 0."""
    return max(0, int(math.floor(n * e / epochs + 0.5)))


def short_recipe(recipe: Any, e: int) -> Dict[str, int]:
    """The recipe overrides of the ``e``-epoch schedule of ``recipe`` (a RecipeSpec)."""
    return {"epochs": e,
            "warmup_epochs": min(e, scaled(recipe.warmup_epochs, e, recipe.epochs)),
            "cooldown_epochs": scaled(recipe.cooldown_epochs, e, recipe.epochs)}


def describe(recipe: Any, short: Dict[str, int]) -> str:
    """One line: how the recipe's schedule shrinks."""
    return (f"epochs {recipe.epochs} -> {short['epochs']}, warmup {recipe.warmup_epochs} -> "
            f"{short['warmup_epochs']}, cooldown {recipe.cooldown_epochs} -> "
            f"{short['cooldown_epochs']}")

"""The IR of a design space: one base ModelSpec and the choices that vary it.

A choice owns one or more *places* (paths of IR fields from the ModelSpec, such as
``("stages", 0, "depth")`` or ``("recipe", "lr")``; a ``$name`` used twice has two) and
its alternatives, each with the IR value it puts at every place and where it was written.
The base spec holds every choice at its first alternative, so a spec without choices is
a one-point space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from ..errors import Loc
from ..ir import BUDGET_METRICS, ModelSpec

Path = Tuple[Any, ...]  # field names and stage indices from the ModelSpec

METRICS = BUDGET_METRICS


@dataclass(frozen=True)
class Alternative:
    values: Tuple[Any, ...]  # the IR value at each place of its choice
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Choice:
    """One choice: ``name`` is ``$name``'s name when ``tied``, else its place
    (``stage1.width``)."""

    name: str
    places: Tuple[Path, ...]
    alternatives: Tuple[Alternative, ...]
    loc: Loc = field(compare=False)
    tied: bool = False
    range: Optional[Tuple[int, int]] = None  # written {lo..hi}
    form: str = "value"  # value | depth | width: how the .mf text writes it


@dataclass(frozen=True)
class Budget:
    """``low <= metric <= high``; ``batch`` is the batch of ``train_memory``."""

    metric: str
    low: Optional[int]
    high: Optional[int]
    loc: Loc = field(compare=False)
    batch: Optional[int] = None

    def holds(self, value: int) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or
                                                            value <= self.high)


@dataclass
class Space:
    base: ModelSpec
    choices: Tuple[Choice, ...]
    budgets: Tuple[Budget, ...]
    source: Optional[str] = None

    @property
    def size(self) -> int:
        """Assignments (before canonical form merges equal models)."""
        return math.prod(len(c.alternatives) for c in self.choices)

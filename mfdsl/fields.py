"""What a value the user writes may be: its type and constraints, as one :class:`Field`.

Both kinds of user-facing value are described by it: an IR setting
(:class:`mfdsl.ir.Setting` is a Field plus how the languages spell it) and a component
argument (:attr:`mfdsl.registry.Param.field`). One checker reads it
(:func:`mfdsl.checks.values.check_value`), one writer turns it into JSON Schema
(:func:`mfdsl.schema.value_schema`), and the docs print its :meth:`Field.range_text`.

This module imports nothing of mfdsl, so the registry can use it and still sit at the
bottom of the import graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Optional, Tuple

# Value types. COUNT is an int that may be written with an SI suffix (2G), FLOATS a tuple
# of numbers, SIZE an (height, width) pair of ints.
INT, FLOAT, BOOL, STR = "int", "float", "bool", "str"
COUNT, FLOATS, SIZE = "count", "floats", "size"
VALUE_TYPES = (INT, FLOAT, BOOL, STR, COUNT, FLOATS, SIZE)
# A component type names a registry kind; the value is a component of that kind.
COMPONENT_KINDS = ("mixer", "activation", "norm", "head")
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Field:
    """The type and constraints of one value. Ranges are inclusive unless ``*_exclusive``.

    ``type`` is one of :data:`VALUE_TYPES` or of :data:`COMPONENT_KINDS`.
    """

    type: str
    min: Optional[float] = None
    max: Optional[float] = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    choices: Optional[Tuple[Hashable, ...]] = None
    optional: bool = False  # may be none / null
    length: Optional[int] = None  # FLOATS: number of items (None: per input channel)
    item_min: Optional[float] = None  # FLOATS: lower bound of each item
    item_max: Optional[float] = None
    item_min_exclusive: bool = False
    item_max_exclusive: bool = False
    # The value ends up in float32 (a tensor's initial value, a kernel's constant): it
    # must fit float32, or it would be inf there and NaN after one step.
    tensor: bool = False

    def __post_init__(self) -> None:
        if self.type not in VALUE_TYPES and self.type not in COMPONENT_KINDS:
            raise ValueError(f"unknown value type {self.type!r}; expected one of "
                             f"{VALUE_TYPES + COMPONENT_KINDS}")

    @property
    def is_component(self) -> bool:
        return self.type in COMPONENT_KINDS

    def range_text(self) -> str:
        """``> 0 and <= 64``, ``one of a, b``; '' when unbounded."""
        if self.choices:
            return "one of " + ", ".join(value_text(c) for c in self.choices)
        return _range_text(self.min, self.max, self.min_exclusive, self.max_exclusive)

    def item_range_text(self) -> str:
        """The range of each item of a FLOATS value; '' when unbounded."""
        return _range_text(self.item_min, self.item_max, self.item_min_exclusive,
                           self.item_max_exclusive)

    def below_min(self, v: Any) -> bool:
        lo = self.min
        return lo is not None and (v <= lo if self.min_exclusive else v < lo)

    def in_range(self, v: Any) -> bool:
        hi = self.max
        return not self.below_min(v) and not (
            hi is not None and (v >= hi if self.max_exclusive else v > hi))

    def item_in_range(self, v: Any) -> bool:
        lo, hi = self.item_min, self.item_max
        if lo is not None and (v <= lo if self.item_min_exclusive else v < lo):
            return False
        if hi is not None and (v >= hi if self.item_max_exclusive else v > hi):
            return False
        return True


def _range_text(lo: Optional[float], hi: Optional[float], lo_ex: bool, hi_ex: bool) -> str:
    low = "" if lo is None else f"{'>' if lo_ex else '>='} {num_text(lo)}"
    high = "" if hi is None else f"{'<' if hi_ex else '<='} {num_text(hi)}"
    return " and ".join(t for t in (low, high) if t)


def num_text(v: float) -> str:
    """A bound as people write it: ``0`` for 0.0, ``0.99``, ``1e-06``."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


def value_text(v: Any) -> str:
    """A choice as the languages spell it: ``true``, ``none``, ``4``, ``adamw``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (int, float)):
        return num_text(v)
    return str(v)

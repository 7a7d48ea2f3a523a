"""The one value checker: a value against its :class:`~mfdsl.fields.Field`.

IR settings (``checks.check_setting``) and component arguments (``checks.check_call``)
both come here, so a failure reads the same whichever the value was written for:

* ``X must be an integer, got 'a'`` (and ``a number``, ``true or false``, ``a string``);
* ``X cannot be none``;
* ``X must be finite, got inf``; ``X is too large for float32: 1e+39``;
* ``X must be >= 1, got 0`` (below the minimum); ``X is out of range: 65`` (above the
  maximum), with the hint ``allowed: >= 1 and <= 64``;
* ``X must be one of a, b, got 'c'``, with the hint ``did you mean 'b'?``.

``X`` is the caller's label: ``train optimizer``, ``argument 'eps' of norm 'layernorm'``.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Optional

from ..errors import Loc, SpecError, nearest
from ..fields import BOOL, COUNT, FLOAT, FLOAT32_MAX, FLOATS, INT, SIZE, STR, Field, num_text
from ..ir import Call


def check_value(field: Field, v: Any, label: str, loc: Optional[Loc]) -> Any:
    """Raise :class:`SpecError` at ``loc`` if ``v`` is not a value of ``field``; return it
    as its consumers see it (an int where a float is expected widened to float).

    A component value (``field.is_component``) needs a build context: only its ``none`` is
    checked here, the component itself by ``checks.check_call``.
    """
    if v is None:
        if field.optional:
            return None
        whole = field.type not in (FLOATS, SIZE)
        raise SpecError(f"{label} cannot be none", loc, hint=_allowed(field) or (
            f"expected {expected_text(field.type)}" if whole else None))
    t = field.type
    if field.is_component:
        raise TypeError(f"{label}: a component is checked by checks.check_call")
    if t in (INT, COUNT):
        if not is_int(v):
            raise SpecError(f"{label} must be an integer, got {show(v)}", loc,
                            hint=_allowed(field))
    elif t == FLOAT:
        if not is_number(v):
            raise SpecError(f"{label} must be a number{' or none' if field.optional else ''}, "
                            f"got {show(v)}", loc, hint=_allowed(field))
        _finite(field, v, label, loc)
    elif t == BOOL:
        if not isinstance(v, bool):
            raise SpecError(f"{label} must be true or false, got {show(v)}", loc,
                            hint=_allowed(field))
    elif t == STR:
        if not isinstance(v, str):
            raise SpecError(f"{label} must be a string, got {show(v)}", loc,
                            hint=_allowed(field))
    else:
        return _check_items(field, v, label, loc)
    if field.choices and v not in field.choices:
        guess = nearest(v, [str(c) for c in field.choices]) if isinstance(v, str) else None
        raise SpecError(f"{label} must be {field.range_text()}, got {show(v)}", loc,
                        hint=f"did you mean '{guess}'?" if guess else None)
    if t in (INT, COUNT, FLOAT):
        _in_range(field, v, label, loc)
    return float(v) if t == FLOAT else v


def _check_items(field: Field, v: Any, label: str, loc: Optional[Loc]) -> Any:
    """FLOATS (a tuple of numbers) and SIZE (height, width)."""
    t = field.type
    item = "integer" if t == SIZE else "number"
    n = field.length if t == FLOATS else 2
    if not isinstance(v, (tuple, list)) or (n is not None and len(v) != n) or not v:
        count = f"{n} {item}s" if n else f"{item}s"
        raise SpecError(f"{label} must be {count}, got {show(v)}", loc)
    for x in v:
        if not (is_int(x) if t == SIZE else is_number(x)):
            raise SpecError(f"each value of {label} must be {expected_text(t)}, got "
                            f"{show(x)}", loc)
        if t == SIZE:
            _in_range(field, x, f"{label} side", loc)
            continue
        _finite(field, x, f"each value of {label}", loc)
        if not field.item_in_range(x):
            raise SpecError(f"{label} value {show(x)} is out of range", loc,
                            hint=f"allowed: {field.item_range_text()}")
    return v


def _allowed(field: Field) -> Optional[str]:
    text = field.range_text()
    return f"allowed: {text}" if text else None


def _finite(field: Field, v: Any, label: str, loc: Optional[Loc]) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise SpecError(f"{label} must be finite, got {v}", loc)
    if field.tensor and abs(v) > FLOAT32_MAX:
        # It becomes a float32 tensor (a parameter's initial value, a normalisation
        # constant, a kernel's constant): inf there, NaN after one step.
        raise SpecError(f"{label} is too large for float32: {_short(v)}", loc,
                        hint="float32 holds magnitudes up to 3.4e38")
    if abs(v) > sys.float_info.max:  # an integer no float can hold
        raise SpecError(f"{label} is too large for a float: {_short(v)}", loc)


def _short(v: Any) -> str:
    """A number for a message; an integer of hundreds of digits by its magnitude."""
    if isinstance(v, int) and abs(v) > sys.float_info.max:
        return f"about 1e{len(str(abs(v))) - 1}"
    return show(v)


def _in_range(field: Field, v: Any, label: str, loc: Optional[Loc]) -> None:
    if field.in_range(v):
        return
    if field.below_min(v):
        op = ">" if field.min_exclusive else ">="
        a = "a count " if field.type == COUNT else ""
        raise SpecError(f"{label} must be {a}{op} {num_text(field.min)}, got {show(v)}", loc,
                        hint=_allowed(field))
    raise SpecError(f"{label} is out of range: {show(v)}", loc, hint=_allowed(field))


def expected_text(t: str) -> str:
    """What a value of type ``t`` is, after "must be" / "expected"."""
    return {INT: "an integer", COUNT: "an integer", FLOAT: "a number",
            BOOL: "true or false", STR: "a string", FLOATS: "a number", SIZE: "an integer",
            }.get(t) or f"{'an' if t[0] in 'aeiou' else 'a'} {t}"


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def show(v: Any) -> str:
    """A value as the user wrote it, in messages."""
    if isinstance(v, Call):
        return f"'{v.name}(...)'" if v.args else f"'{v.name}'"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"'{v}'"
    if v is None:
        return "none"
    return repr(v)


__all__ = ["check_value", "expected_text", "is_int", "is_number", "show"]

"""The canonical ``.mf`` and ``.yaml`` text of a space, and a choice's values as data.

The base spec is printed by :func:`mfdsl.emit.mf.to_mf` (or laid out as YAML data by
:func:`mfdsl.emit.yaml.spec_data`) with a marker at each choice's places; each marker is
then replaced by the choice (``{sepconv | attention}``, ``x{2..4}``, ``@{48, 64}``;
``{choice: [sepconv, attention]}``, ``{range: [2, 4]}``) or by ``$name`` for a named
choice, defined at the top. So a space prints in the canonical layout of a spec, and a
one-point space prints exactly as its spec.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence

from ..emit.mf import _call_text, _count_text, format_value, setting_text, to_mf
from ..ir import Call, call_data, setting_of
from .ir import Budget, Choice, Path, Space
from .resolve import get_at, set_at

_MARK = "__space_choice_{}__"


def value_data(v: Any) -> Any:
    """A choice's value as plain data: a component as in YAML, a mixer list as a list."""
    if isinstance(v, Call):
        return call_data(v)
    if isinstance(v, list):
        return [value_data(x) for x in v] if len(v) != 1 else value_data(v[0])
    if isinstance(v, tuple):
        return list(v)
    return v


def assignment(space: Space, picks: Sequence[int]) -> Dict[str, Any]:
    """``{choice name: the value it took}`` as plain data (for the manifest)."""
    return {c.name: value_data(c.alternatives[p].values[0]) for c, p in
            zip(space.choices, picks)}


def value_text(space: Space, place: Path, v: Any) -> str:
    """One alternative's value as ``.mf`` text, by the type of its place."""
    if isinstance(v, Call):
        return _call_text(v)
    if isinstance(v, list):
        return _call_text(v[0]) if len(v) == 1 else "[" + ", ".join(map(_call_text, v)) + "]"
    parent = get_at(space.base, place[:-1])
    meta = setting_of(type(parent), place[-1])
    return setting_text(meta, v) if meta is not None else format_value(v)


def choice_text(space: Space, choice: Choice) -> str:
    if choice.range is not None:
        return f"{{{choice.range[0]}..{choice.range[1]}}}"
    texts = [value_text(space, choice.places[0], a.values[0]) for a in choice.alternatives]
    plain = all(not isinstance(a.values[0], (Call, list)) for a in choice.alternatives)
    return "{" + (", " if plain else " | ").join(texts) + "}"


def budget_text(b: Budget) -> str:
    if b.low is not None and b.high is not None:
        text = f"{b.metric} {_count_text(b.low)}..{_count_text(b.high)}"
    elif b.high is not None:
        text = f"{b.metric} <= {_count_text(b.high)}"
    else:
        text = f"{b.metric} >= {_count_text(b.low)}"
    return text + (f" at batch {b.batch}" if b.batch is not None else "")


def _marker(current: Any, mark: str) -> Any:
    if isinstance(current, Call):
        return Call(name=mark)
    if isinstance(current, list):
        return [Call(name=mark)]
    return mark


def _marked(space: Space) -> Any:
    """The base spec with choice k's marker at each of its places."""
    marked = space.base
    for k, choice in enumerate(space.choices):
        for place in choice.places:
            current = get_at(marked, place)
            marked = set_at(marked, place, _marker(current, _MARK.format(k)), choice.loc)
    return marked


def to_mf_space(space: Space) -> str:
    """The canonical ``.mf`` text of ``space``; parsing it gives the same space."""
    text = to_mf(_marked(space))
    head: List[str] = []
    for k, choice in enumerate(space.choices):
        mark = _MARK.format(k)
        if choice.tied:
            head.append(f"  ${choice.name} = {choice_text(space, choice)}")
            text = text.replace(f"x{mark}", f"x${choice.name}")
            text = re.sub(rf"(?<![\w$]){re.escape(mark)}(?!\w)", f"${choice.name}", text)
        elif choice.places:
            text = text.replace(mark, choice_text(space, choice), 1)
    if space.budgets:
        head.append("  require " + ", ".join(budget_text(b) for b in space.budgets))
    first, rest = text.split("\n", 1)
    return "\n".join([first, *head, rest]) if head else text


def yaml_choice(choice: Choice) -> Dict[str, Any]:
    """``{choice: [...]}`` or ``{range: [lo, hi]}``: a choice as YAML data."""
    if choice.range is not None:
        return {"range": list(choice.range)}
    return {"choice": [value_data(a.values[0]) for a in choice.alternatives]}


def budget_data(b: Budget) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, v in (("min", b.low), ("max", b.high)):
        if v is not None:
            out[key] = _count_text(v)
    if b.batch is not None:
        out["batch"] = b.batch
    return out


def to_yaml_space(space: Space, schema_ref: str) -> str:
    """The canonical ``.yaml`` text of ``space``; reading it gives the same space."""
    from ..emit.yaml import spec_data, yaml_text

    by_mark = {_MARK.format(k): c for k, c in enumerate(space.choices)}

    def put(v: Any) -> Any:
        if isinstance(v, str) and v in by_mark:
            c = by_mark[v]
            return f"${c.name}" if c.tied else yaml_choice(c)
        if isinstance(v, dict):
            return {k: put(x) for k, x in v.items()}
        if isinstance(v, list):
            return [put(x) for x in v]
        return v

    body = put(spec_data(_marked(space)))
    head: Dict[str, Any] = {"model": body.pop("model")}
    tied = {c.name: yaml_choice(c) for c in space.choices if c.tied}
    if tied:
        head["choices"] = tied
    if space.budgets:
        head["require"] = {b.metric: budget_data(b) for b in space.budgets}
    return yaml_text({**head, **body}, schema_ref)

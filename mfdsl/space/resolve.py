"""One assignment of a space -> a plain ModelSpec (the IR of one model)."""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import Loc
from ..ir import ModelSpec, with_overrides
from .ir import Path, Space


def resolve(space: Space, picks: Sequence[int]) -> ModelSpec:
    """The model with alternative ``picks[k]`` of choice ``k``; each value keeps the
    location of its alternative, so a check locates it there."""
    spec = space.base
    for choice, p in zip(space.choices, picks):
        alt = choice.alternatives[p]
        for place, value in zip(choice.places, alt.values):
            spec = set_at(spec, place, value, alt.loc)
    return spec


def get_at(node: Any, path: Path) -> Any:
    for step in path:
        node = node[step] if isinstance(step, int) else getattr(node, step)
    return node


def set_at(node: Any, path: Path, value: Any, loc: Loc) -> Any:
    """A copy of ``node`` with ``value`` at ``path`` (copies only along the path)."""
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(node)
        items[head] = set_at(items[head], rest, value, loc)
        return items
    new = with_overrides(node, **{head: set_at(getattr(node, head), rest, value, loc)
                                  if rest else value})
    if not rest:
        new.locs[head] = loc
    return new

"""A space file -> :class:`~mfdsl.space.ir.Space`, every alternative checked.

The front end reads the syntax and builds the plain spec of any assignment; this module
finds where each choice lands in the IR (the fields that differ from the base spec when
only that choice changes), checks every alternative with the ordinary checks and reads
the budgets.
"""
from __future__ import annotations

import os
import random
from dataclasses import fields, is_dataclass
from decimal import Decimal
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import Loc, SpecError, nearest
from ..ir import DownsampleSpec, EvalSpec, LimitsSpec, ModelSpec, RecipeSpec, StageSpec
from .ir import METRICS, Alternative, Budget, Choice, Path, Space
from .resolve import get_at, resolve

# IR nodes a place may lie inside; any other value (a component, a mixer list) is one place.
_NODES = (ModelSpec, StageSpec, RecipeSpec, EvalSpec, LimitsSpec, DownsampleSpec)
# Other contexts an alternative that fails its check is tried in before it is reported.
CONTEXTS_TRIED = 4
Build = Callable[[Sequence[int]], ModelSpec]


def load_space(path: Union[str, "os.PathLike[str]"]) -> Space:
    """Read a ``.mf`` or ``.yaml`` space (a plain spec is a one-point space); SpecError,
    located."""
    from ..pipeline import read_spec_text
    from ..plugins import load_plugins

    load_plugins()
    path = os.fspath(path)
    text, ext = read_spec_text(path)
    front: Any
    if ext == ".mf":
        from ..frontend.mf import parse_mf_space

        front = parse_mf_space(text, path)
    else:
        from ..frontend.yaml_space import read_yaml_space

        front = read_yaml_space(text, path)
    space = space_of(front.build, front.choice_sites(), budgets_of(front.budget_sites()))
    space.source = path
    space.base.source = path
    check_alternatives(space)
    return space


def space_or_none(path: str) -> Optional[Space]:
    """The space in ``path``, or None when it is a plain spec (no choice, no budgets)."""
    from ..pipeline import read_spec_text

    text, ext = read_spec_text(path)
    if ext == ".mf":
        from ..frontend.mf import parse_mf_space

        syntax = parse_mf_space(text, path)
        plain = not syntax.choices and syntax.require is None
    else:
        from ..frontend.yaml_spec import first_space_path, read_yaml

        plain = first_space_path(read_yaml(text, path)[0]) is None
    return None if plain else load_space(path)


def space_of(build: Build, sites: Sequence[Tuple[Optional[str], List[Loc], Loc,
                                              Optional[Tuple[int, int]]]],
             budgets: Tuple[Budget, ...]) -> Space:
    """The space a front end describes: ``sites`` gives each choice's name (``$name``, or
    None), its alternatives' locations, its own location and its range form."""
    base = build([0] * len(sites))
    choices: List[Choice] = []
    owner: Dict[Path, Tuple[Choice, Loc]] = {}
    names: Dict[str, int] = {}
    for k, (tied, alt_locs, loc, rng) in enumerate(sites):
        specs = [base]
        for j in range(1, len(alt_locs)):
            picks = [0] * len(sites)
            picks[k] = j
            specs.append(build(picks))
        found = sorted({p for s in specs[1:] for p in diff_paths(base, s)}, key=_order)
        places = tuple(p for p in found if not any(q != p and p[:len(q)] == q for q in found))
        alts = tuple(Alternative(tuple(get_at(s, p) for p in places), al)
                     for s, al in zip(specs, alt_locs))
        for j, a in enumerate(alts):
            same = next((b for b in alts[:j] if b.values == a.values), None)
            if same is not None:
                raise SpecError("this alternative is the same as an earlier one", a.loc,
                                hint=f"the same value is listed at line {same.loc.line}, "
                                     f"column {same.loc.column}; remove one")
        name = tied if tied else (place_name(places) if places else f"line{loc.line}")
        if name in names:
            names[name] += 1
            name = f"{name}_{names[name]}"
        names.setdefault(name, 1)
        choice = Choice(name, places, alts, loc, tied=bool(tied), range=rng)
        for p in places:
            for q, (other, other_loc) in owner.items():
                if q[:len(p)] == p or p[:len(q)] == q:
                    raise SpecError(f"this choice sets {place_name((p,))}, which the choice at "
                                    f"line {other_loc.line}, column {other_loc.column} also "
                                    "sets", loc, hint="make it one choice listing the "
                                    "combinations, e.g. {[sepconv, attention] | "
                                    "[attention, attention]}")
            owner[p] = (choice, loc)
        choices.append(choice)
    return Space(base, tuple(choices), budgets)


def diff_paths(a: Any, b: Any, path: Path = ()) -> List[Path]:
    """The places (IR paths) where ``a`` and ``b`` differ."""
    if a == b:
        return []
    if type(a) is type(b) and isinstance(a, _NODES):
        out: List[Path] = []
        for f in fields(a):
            if f.compare:
                out += diff_paths(getattr(a, f.name), getattr(b, f.name), path + (f.name,))
        return out
    if path == ("stages",) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in diff_paths(x, y, path + (i,))]
    return [path]


def _order(p: Path) -> Tuple[str, ...]:
    return tuple(f"{s:08d}" if isinstance(s, int) else s for s in p)


def place_name(places: Sequence[Path]) -> str:
    """``stage2.width``, ``train.lr``, ``head``; a stage setting every stage shares is
    named by the setting alone (``mlp_act``)."""
    def one(p: Path) -> str:
        if p[0] == "stages":
            return ".".join([f"stage{p[1] + 1}", *map(str, p[2:])])
        head = {"recipe": "train"}.get(p[0], p[0])
        return ".".join([head, *map(str, p[1:])])

    if len(places) > 1 and all(p[0] == "stages" and len(p) == 3 for p in places) and \
            len({p[2] for p in places}) == 1:
        return str(places[0][2])
    return one(places[0])


def check_alternatives(space: Space) -> None:
    """Each alternative passes the ordinary checks with the other choices at their first
    alternative, or, failing that, in one of a few random other combinations; else its
    first error is raised (located where the checks locate it: at the alternative)."""
    from ..checks import check

    rng = random.Random(0)
    base = [0] * len(space.choices)
    for k, choice in enumerate(space.choices):
        for j in range(len(choice.alternatives)):
            first: Optional[SpecError] = None
            for attempt in range(1 + CONTEXTS_TRIED if space.size > 1 else 1):
                picks = list(base) if attempt == 0 else [
                    rng.randrange(len(c.alternatives)) for c in space.choices]
                picks[k] = j
                try:
                    check(resolve(space, picks))
                except SpecError as err:
                    first = first or err
                    continue
                first = None
                break
            if first is not None:
                raise first


def budgets_of(sites: Sequence[Tuple[str, Any, Any, Optional[Tuple[str, Any]], Loc,
                                     Optional[Loc]]]) -> Tuple[Budget, ...]:
    """(metric, low, high, (word, value) of `at batch`, loc, loc of `at`) -> Budgets."""
    out: List[Budget] = []
    seen: Dict[str, Loc] = {}
    for metric, low, high, at, loc, at_loc in sites:
        if metric not in METRICS:
            guess = nearest(metric, METRICS)
            raise SpecError(f"unknown budget '{metric}'", loc,
                            hint=f"did you mean '{guess}'?" if guess else
                            "budgets: " + ", ".join(METRICS))
        if metric in seen:
            raise SpecError(f"the {metric} budget is written twice", loc,
                            hint=f"first at line {seen[metric].line}; keep one")
        seen[metric] = loc
        lo, hi = _count(low, metric), _count(high, metric)
        if lo is not None and hi is not None and lo > hi:
            raise SpecError(f"the {metric} window is empty: its low end is above its high "
                            "end", loc, hint="write low..high")
        batch = None
        if metric == "train_memory":
            if at is None:
                raise SpecError("a train_memory budget needs the batch it is for", loc,
                                hint="e.g. train_memory <= 12G at batch 128")
            word, value = at
            if word != "at batch" or _count(value, "batch") is None:
                raise SpecError(f"expected `at batch N`, got `{word} ...`", at_loc or loc)
            batch = _count(value, "batch")
        elif at is not None:
            raise SpecError(f"only train_memory takes `at batch`, not {metric}",
                            at_loc or loc)
        out.append(Budget(metric, lo, hi, loc, batch))
    return tuple(out)


def _count(v: Any, what: str) -> Optional[int]:
    """A budget number: ``30M``, ``4e9``, ``128`` (an int, a Decimal, a float or an atom)."""
    if v is None:
        return None
    raw = getattr(v, "value", v)
    loc = getattr(v, "loc", None)
    if isinstance(raw, str):
        from ..ir import COUNT_SUFFIX

        try:
            raw = Decimal(raw[:-1]) * COUNT_SUFFIX[raw[-1]] if raw[-1:] in COUNT_SUFFIX \
                else Decimal(raw)
        except Exception:
            raise SpecError(f"{what} must be a count like 30M, got {raw!r}", loc) from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float, Decimal)) or raw < 0:
        raise SpecError(f"{what} must be a count like 30M or 4.1G", loc)
    return int(raw)

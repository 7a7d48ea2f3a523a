"""The YAML syntax of design spaces: ``{choice: [...]}``, ``{range: [lo, hi]}``, ``$name``
with a top-level ``choices:`` mapping, and a ``require:`` mapping (docs/spaces.md).

:func:`read_yaml_space` collects the choices of a document; :meth:`YamlSpaceSyntax.build`
puts one alternative of each in its place and reads the result with the ordinary YAML
front end (schema, then IR), every value located where its alternative was written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import Loc, SpecError
from ..ir import ModelSpec
from .mf_syntax import MAX_RANGE
from .yaml_spec import (SPACE_KEYS, Path, _Builder, _Document, _first_choice, _walk,
                        choice_node, read_yaml, ref_name, validate)

@dataclass
class YamlChoice:
    """One choice as written: inline (``name`` None) at ``path``, or ``choices: {name:}``."""

    path: Path  # of the {choice: ...} / {range: ...} mapping
    alternatives: List[Tuple[Any, Path, Loc]]  # value, where it was written, its location
    loc: Loc
    name: Optional[str] = None
    range: Optional[Tuple[int, int]] = None
    uses: List[Path] = field(default_factory=list)  # where ``$name`` is written


@dataclass
class YamlSpaceSyntax:
    data: Dict[str, Any]  # the document without choices: and require:
    doc: _Document
    choices: List[YamlChoice]
    require: Optional[Dict[str, Any]]

    def substituted(self, picks: Sequence[int]) -> Tuple[Dict[str, Any], _Document]:
        """The plain document with alternative ``picks[k]`` of choice ``k`` in its places,
        and its positions: each value's is where its alternative was written."""
        subs: List[Tuple[Path, Any, Path]] = []
        for c, j in zip(self.choices, picks):
            value, src, _loc = c.alternatives[j]
            for place in (c.uses if c.name else [c.path]):
                subs.append((place, value, src))
        data = self.data
        for place, value, _src in subs:
            data = _put(data, place, value)
        doc = _Document(self.doc.path)
        for mine, theirs in ((doc.value_locs, self.doc.value_locs),
                             (doc.key_locs, self.doc.key_locs)):
            mine.update((p, loc) for p, loc in theirs.items()
                        if not any(p[:len(s)] == s for s, _v, _q in subs))
            for place, _value, src in subs:
                mine.update((place + p[len(src):], loc) for p, loc in theirs.items()
                            if p[:len(src)] == src)
        return data, doc

    def build(self, picks: Sequence[int]) -> ModelSpec:
        """The plain spec with alternative ``picks[k]`` in the place of choice ``k``."""
        data, doc = self.substituted(picks)
        validate(data, doc)
        return _Builder(doc).model(data)

    def choice_sites(self) -> List[Tuple[Optional[str], List[Loc], Loc,
                                         Optional[Tuple[int, int]]]]:
        return [(c.name, [a[2] for a in c.alternatives], c.loc, c.range) for c in self.choices]

    def budget_sites(self) -> List[Tuple[str, Any, Any, Any, Loc, Optional[Loc]]]:
        """Per ``require:`` entry: (metric, min, max, ("at batch", batch) or None, its
        location, the batch's location); counts carry their location."""
        out = []
        for metric, window in (self.require or {}).items():
            p = ("require", metric)
            window = window if isinstance(window, dict) else {}
            low, high = (_Located(window[k], self.doc.loc(p + (k,))) if k in window else None
                         for k in ("min", "max"))
            at = ("at batch", _Located(window["batch"], self.doc.loc(p + ("batch",)))) \
                if "batch" in window else None
            out.append((metric, low, high, at, self.doc.key_loc(p),
                        self.doc.loc(p + ("batch",)) if at else None))
        return out


@dataclass
class _Located:
    value: Any
    loc: Loc


def read_yaml_space(text: str, path: str) -> YamlSpaceSyntax:
    """Read a YAML space and collect its choices (named ones first, then the others in
    document order); undefined, unused or nested choices, empty sets and empty ranges
    are located errors."""
    data, doc = read_yaml(text, path)
    named: Dict[str, YamlChoice] = {}
    raw = data.get("choices")
    if isinstance(raw, dict):
        for name, v in raw.items():
            p = ("choices", name)
            if not choice_node(v):
                raise SpecError(f"choices.{name}: a named choice is written {{choice: [a, b]}}"
                                " or {range: [lo, hi]}", doc.loc(p),
                                hint=f"e.g. {name}: {{choice: [64, 96]}}")
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise SpecError(f"'{name}' is not a choice name", doc.key_loc(p),
                                hint="a name is letters, digits and _, e.g. w or width2")
            named[name] = _choice(v, p, doc, name)
    inline: List[YamlChoice] = []

    def visit(v: Any, p: Path) -> bool:
        if choice_node(v):
            inline.append(_choice(v, p, doc))
            return False
        name = ref_name(v)
        if name is not None:
            if name not in named:
                raise SpecError(f"${name} is not defined", doc.loc(p),
                                hint=f"define it under `choices:`, e.g. {name}: "
                                     "{choice: [64, 96]}")
            named[name].uses.append(p)
        return True

    body = {k: v for k, v in data.items() if k not in SPACE_KEYS}
    _walk(body, (), visit)
    for c in named.values():
        if not c.uses:
            raise SpecError(f"${c.name} is defined but never used", doc.key_loc(c.path),
                            hint=f"write ${c.name} where the value stands, or remove it")
    require = data.get("require")
    space = YamlSpaceSyntax(body, doc, [*named.values(), *inline],
                            require if isinstance(require, dict) else None)
    try:
        validate(data, doc, space=True)
    except SpecError:
        # The plain format's message, at the alternative, says more when one value is
        # wrong; the design-space schema's stands when the choice itself is misplaced.
        for k, c in enumerate(space.choices):
            for j in range(len(c.alternatives)):
                space.build([j if i == k else 0 for i in range(len(space.choices))])
        raise
    return space


def _choice(v: Dict[str, Any], p: Path, doc: _Document, name: Optional[str] = None
            ) -> YamlChoice:
    kind = choice_node(v)
    items: List[Any] = v[kind]
    q = p + (kind,)
    loc = doc.key_loc(q)
    if kind == "range":
        if len(items) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                      and x >= 0 for x in items):
            raise SpecError("a range is written {range: [lo, hi]} with two integers >= 0",
                            doc.loc(q), hint="list other values: {choice: [1.0e-3, 2.0e-3]}")
        lo, hi = items
        if hi < lo:
            raise SpecError(f"the range [{lo}, {hi}] is empty: {lo} is above {hi}",
                            doc.loc(q), hint=f"write [{hi}, {lo}]")
        if hi - lo + 1 > MAX_RANGE:
            raise SpecError(f"the range [{lo}, {hi}] has {hi - lo + 1} values, more than "
                            f"{MAX_RANGE}", doc.loc(q),
                            hint="a choice lists the values worth trying")
        at = doc.loc(q)
        return YamlChoice(p, [(x, q, at) for x in range(lo, hi + 1)], loc, name, (lo, hi))
    if not items:
        raise SpecError("the choice set is empty", doc.loc(q),
                        hint="list at least one value, e.g. {choice: [64, 96]}")
    for j, alt in enumerate(items):
        inner = _first_choice(alt)
        if inner is not None:
            raise SpecError("a choice cannot hold another choice", doc.loc(q + (j,) + inner),
                            hint="list the combinations as alternatives of one choice")
    return YamlChoice(p, [(x, q + (j,), doc.loc(q + (j,))) for j, x in enumerate(items)],
                      loc, name)


def _put(data: Any, p: Path, value: Any) -> Any:
    """A copy of ``data`` with ``value`` at ``p`` (copies only along the path)."""
    if not p:
        return value
    head, rest = p[0], p[1:]
    if isinstance(data, list):
        out = list(data)
    else:
        out = dict(data)
    out[head] = _put(data[head], rest, value)
    return out

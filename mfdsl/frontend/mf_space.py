"""The ``.mf`` syntax of design spaces: choices, named choices and ``require`` lines.

:func:`read_space_syntax` collects the choices of a parsed file; :meth:`MfSpaceSyntax.build`
puts one alternative of each in its place and reads the result with the ordinary
:class:`~mfdsl.frontend.mf_reader.Interpreter`, so every value is read and located as in
a plain spec (an alternative's errors point at the alternative).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import Loc, SpecError
from ..ir import ModelSpec
from .mf_reader import Interpreter
from .mf_syntax import (Atom, Block, Budget, CallNode, ChoiceNode, Definition, Line, ListNode,
                        RefNode, Require, TupleNode, Width)

SPACE_NODES = (ChoiceNode, RefNode, Definition, Require)


@dataclass
class SyntaxChoice:
    """One choice as written: inline (``name`` None) or defined once as ``$name``."""

    node: ChoiceNode
    name: Optional[str] = None
    uses: List[RefNode] = field(default_factory=list)  # where ``$name`` is written


@dataclass
class MfSpaceSyntax:
    path: str
    kw_loc: Loc
    name: Atom
    body: Block
    choices: List[SyntaxChoice]
    require: Optional[Require]

    def build(self, picks: Sequence[int]) -> ModelSpec:
        """The plain spec with alternative ``picks[k]`` in the place of choice ``k``."""
        by_node = {id(c.node): p for c, p in zip(self.choices, picks)}
        by_name = {c.name: (c.node, p) for c, p in zip(self.choices, picks) if c.name}

        def pick(node: Any, form: str) -> Any:
            if isinstance(node, ChoiceNode):
                return _as_form(node.alternatives[by_node[id(node)]], form)
            named, p = by_name[node.name]
            return _as_form(named.alternatives[p], form)

        body = _substitute(self.body, pick)
        return Interpreter(self.path).model(self.kw_loc, self.name, body)


    def choice_sites(self) -> List[Tuple[Optional[str], List[Loc], Loc,
                                         Optional[Tuple[int, int]]]]:
        """Per choice: its ``$name`` (or None), its alternatives' locations, its location
        and its ``{lo..hi}`` range (or None)."""
        return [(c.name, [a.loc for a in c.node.alternatives], c.node.loc, c.node.range)
                for c in self.choices]

    def budget_sites(self) -> List[Tuple[str, Any, Any, Any, Loc, Optional[Loc]]]:
        return [(b.metric, b.low, b.high, b.at, b.loc, b.at_loc) for b in
                budget_items(self.require)]


def first_space_node(item: Any) -> Any:
    """The first choice, reference, definition or ``require`` in ``item``, or None."""
    found: List[Any] = []
    _walk(item, lambda n: found.append(n) if isinstance(n, SPACE_NODES) else None)
    return found[0] if found else None


def read_space_syntax(path: str, kw_loc: Loc, name: Atom, body: Block) -> MfSpaceSyntax:
    """Collect the choices of a model block; undefined, unused or repeated names and empty
    choice sets are located errors."""
    choices: List[SyntaxChoice] = []
    named: Dict[str, SyntaxChoice] = {}
    require: Optional[Require] = None
    lines: List[Line] = []
    for line in body.lines:
        if len(line.items) == 1 and isinstance(line.items[0], Definition):
            d = line.items[0]
            if d.name in named:
                first = named[d.name].node.loc
                raise SpecError(f"${d.name} is defined twice", d.loc,
                                hint=f"first defined at line {first.line}; rename one")
            sc = SyntaxChoice(d.choice, d.name)
            named[d.name] = sc
            choices.append(sc)
            continue
        if len(line.items) == 1 and isinstance(line.items[0], Require):
            if require is not None:
                raise SpecError("require is written twice", line.items[0].loc,
                                hint=f"put every budget on the require line at line "
                                     f"{require.loc.line}")
            require = line.items[0]
            continue
        lines.append(line)

    def visit(node: Any) -> None:
        if isinstance(node, ChoiceNode):
            choices.append(SyntaxChoice(node))
        elif isinstance(node, RefNode):
            if node.name not in named:
                raise SpecError(f"${node.name} is not defined", node.loc,
                                hint=f"define it on its own line: ${node.name} = {{64, 96}}")
            named[node.name].uses.append(node)

    for line in lines:
        for item in line.items:
            _walk(item, visit)
    for sc in choices:
        if not sc.node.alternatives:
            raise SpecError("the choice set is empty", sc.node.loc,
                            hint="list at least one value, e.g. {64, 96}")
        inner = next((a for a in sc.node.alternatives if first_space_node(a) is not None),
                     None)
        if inner is not None:
            raise SpecError("a choice cannot hold another choice", first_space_node(inner).loc,
                            hint="list the combinations as alternatives of one choice")
        if sc.name is not None and not sc.uses:
            raise SpecError(f"${sc.name} is defined but never used", sc.node.loc,
                            hint=f"write ${sc.name} where the value stands, or remove it")
    return MfSpaceSyntax(path, kw_loc, name, Block(lines, body.loc, body.end), choices,
                         require)


def _as_form(alt: Any, form: str) -> Any:
    """An alternative as the item its place expects: ``x3`` for a depth, ``@64`` a width."""
    if isinstance(alt, Atom) and alt.kind == "int":
        if form == "depth":
            return Atom("depth", alt.value, f"x{alt.value}", alt.loc, alt.end)
        if form == "width":
            return Width(alt.value, alt.loc, alt.end)
    return alt


def _walk(item: Any, visit: Any) -> None:
    visit(item)
    if isinstance(item, Block):
        for line in item.lines:
            for x in line.items:
                _walk(x, visit)
    elif isinstance(item, CallNode):
        for _name, value, _loc in item.args:
            _walk(value, visit)
    elif isinstance(item, (TupleNode, ListNode)):
        for x in item.items:
            _walk(x, visit)
    elif isinstance(item, ChoiceNode):
        for x in item.alternatives:
            _walk(x, visit)
    elif isinstance(item, Definition):
        _walk(item.choice, visit)


def _substitute(item: Any, pick: Any) -> Any:
    if isinstance(item, (ChoiceNode, RefNode)):
        return pick(item, item.form)
    if isinstance(item, Block):
        return Block([Line([_substitute(x, pick) for x in line.items]) for line in item.lines],
                     item.loc, item.end)
    if isinstance(item, CallNode):
        return CallNode(item.name, [(n, _substitute(v, pick), loc) for n, v, loc in item.args],
                        item.loc, item.end)
    if isinstance(item, TupleNode):
        return TupleNode([_substitute(x, pick) for x in item.items], item.loc, item.end)
    if isinstance(item, ListNode):
        return ListNode([_substitute(x, pick) for x in item.items], item.loc, item.end)
    return item


def budget_items(require: Optional[Require]) -> Tuple[Budget, ...]:
    return tuple(require.budgets) if require is not None else ()

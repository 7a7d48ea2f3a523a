"""The ``.mf`` syntax: the Lark parser and the syntax tree it is turned into.

The grammar (``grammar/metaformer.lark``) fixes lines of items inside ``{ }`` blocks,
values, calls, tuples and lists. :class:`ToSyntax` turns Lark's tree into plain values
with their source positions (:class:`Atom`, :class:`CallNode`, ...); reading them by
keyword is :mod:`mfdsl.frontend.mf_reader`'s job.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Iterator, List, Optional, Tuple, Union

from lark import Lark, Token, Transformer

from ..errors import Loc, SpecError
from ..ir import COUNT_SUFFIX
from ..resources import grammar_file

SI_SUFFIX = COUNT_SUFFIX

# --- syntax tree ----------------------------------------------------------------------
# What the Lark transformer produces: plain values with their source positions.

@dataclass
class Atom:
    kind: str  # name | int | float | si | str | size | depth
    value: Any
    text: str
    loc: Loc
    end: Loc


@dataclass
class Width:
    value: int
    loc: Loc
    end: Loc


@dataclass
class CallNode:
    name: str
    args: List[Tuple[Optional[str], Any, Loc]]  # (name or None if positional, item, loc)
    loc: Loc
    end: Loc


@dataclass
class TupleNode:
    items: List[Any]
    loc: Loc
    end: Loc


@dataclass
class ListNode:
    items: List[Any]
    loc: Loc
    end: Loc


@dataclass
class Line:
    items: List[Any]


@dataclass
class Block:
    lines: List[Line]
    loc: Loc
    end: Loc


# --- design spaces (docs/spaces.md) ---------------------------------------------------

@dataclass
class ChoiceNode:
    """``{a | b}``, ``x{2..4}``, ``@{48, 64}``: alternatives standing where one value
    stands. ``form`` is where it was written (value, depth or width); ``range`` keeps
    ``(lo, hi)`` when it was written ``{lo..hi}``, so printers can keep that form."""

    alternatives: List[Any]
    form: str  # value | depth | width
    loc: Loc
    end: Loc
    range: Optional[Tuple[int, int]] = None


@dataclass
class RefNode:
    """``$w``, ``x$d``, ``@$w``: the value a named choice takes."""

    name: str
    form: str  # value | depth | width
    loc: Loc
    end: Loc


@dataclass
class Definition:
    """``$w = {64, 96}``: a choice with a name, tying every place that writes ``$w``."""

    name: str
    choice: ChoiceNode
    loc: Loc


@dataclass
class Budget:
    """One budget of a ``require`` line: ``params <= 30M``, ``macs 3.8G..4.4G``,
    ``train_memory <= 12G at batch 128``. ``low``/``high`` are None when open."""

    metric: str
    low: Optional[Any]
    high: Optional[Any]
    at: Optional[Tuple[str, Any]]  # (word, value) of `at batch 128`
    loc: Loc
    at_loc: Optional[Loc] = None


@dataclass
class Require:
    budgets: List[Budget]
    loc: Loc


# The largest integer range {lo..hi} a choice may span.
MAX_RANGE = 10_000

Item = Union[Atom, Width, CallNode, TupleNode, ListNode, Block]


# --- the parser -----------------------------------------------------------------------

class NewlinesInBrackets:
    """Postlexer: a newline inside ( ) or [ ] is layout, not the end of a setting."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB", "CALL_OPEN"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth:
                continue
            yield tok


@lru_cache(maxsize=1)
def parser() -> Lark:
    with open(grammar_file("metaformer.lark"), encoding="utf-8") as f:
        grammar = f.read()
    return Lark(grammar, parser="lalr", lexer="contextual", postlex=NewlinesInBrackets(),
                propagate_positions=True, maybe_placeholders=False)


def _tok_loc(path: str, tok: Token) -> Loc:
    return Loc(path, tok.line, tok.column)


def _tok_end(path: str, tok: Token) -> Loc:
    return Loc(path, tok.end_line, tok.end_column)


class ToSyntax(Transformer):
    """Lark tree -> Atom / CallNode / ... carrying source positions."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def start(self, children: list) -> Any:
        return children[0]

    def model(self, children: list) -> Tuple[Loc, Atom, Block]:
        kw, name, block = children
        return (_tok_loc(self.path, kw),
                Atom("name", str(name), str(name), _tok_loc(self.path, name),
                     _tok_end(self.path, name)), block)

    def block(self, children: list) -> Block:
        lb, rb = children[0], children[-1]
        lines = [Line([c]) if isinstance(c, (Definition, Require)) else c
                 for c in children[1:-1] if isinstance(c, (Line, Definition, Require))]
        return Block(lines, _tok_loc(self.path, lb), _tok_end(self.path, rb))

    def line(self, children: list) -> Line:
        return Line(list(children))

    def width(self, children: list) -> Any:
        at, num = children
        if isinstance(num, ChoiceNode):
            num.form = "width"
            num.loc = _tok_loc(self.path, at)
            return num
        if num.type == "REF":
            return RefNode(str(num)[1:], "width", _tok_loc(self.path, at),
                           _tok_end(self.path, num))
        _bounded(str(num), _tok_loc(self.path, num))
        return Width(int(num), _tok_loc(self.path, at), _tok_end(self.path, num))

    def _choice(self, children: list, form: str) -> ChoiceNode:
        first, last = children[0], children[-1]
        loc, end = _tok_loc(self.path, first), _tok_end(self.path, last)
        inner = children[1:-1]
        if len(inner) == 1 and isinstance(inner[0], Token) and inner[0].type == "RANGE":
            lo, hi = _integer_range(str(inner[0]), _tok_loc(self.path, inner[0]))
            rloc, rend = _tok_loc(self.path, inner[0]), _tok_end(self.path, inner[0])
            alts = [Atom("int", v, str(v), rloc, rend) for v in range(lo, hi + 1)]
            return ChoiceNode(alts, form, loc, end, (lo, hi))
        alts = [c for c in inner if not isinstance(c, Token)]
        return ChoiceNode(alts, form, loc, end)

    def choice(self, children: list) -> ChoiceNode:
        return self._choice(children, "value")

    def choice_set(self, children: list) -> ChoiceNode:
        return self._choice(children, "value")

    def depth_choice(self, children: list) -> Any:
        if len(children) == 1:  # x$d
            tok = children[0]
            return RefNode(str(tok)[2:], "depth", _tok_loc(self.path, tok),
                           _tok_end(self.path, tok))
        return self._choice(children, "depth")

    def ref(self, children: list) -> RefNode:
        (tok,) = children
        return RefNode(str(tok)[1:], "value", _tok_loc(self.path, tok), _tok_end(self.path, tok))

    def definition(self, children: list) -> Definition:
        ref, _eq, choice = children
        return Definition(str(ref)[1:], choice, _tok_loc(self.path, ref))

    def budget(self, children: list) -> Budget:
        name, rest = children[0], children[1:]
        loc = _tok_loc(self.path, name)
        at = at_loc = None
        if len(rest) >= 3 and isinstance(rest[-3], Token) and rest[-3].type == "NAME":
            at = (f"{rest[-3]} {rest[-2]}", rest[-1])
            at_loc = _tok_loc(self.path, rest[-3])
            rest = rest[:-3]
        op = rest[0]
        if op.type == "RANGE":
            lo_text, hi_text = str(op).split("..")
            rloc = _tok_loc(self.path, op)
            low, high = _si_number(lo_text, rloc), _si_number(hi_text, rloc)
        elif op.type == "LE":
            low, high = None, rest[1]
        else:
            low, high = rest[1], None
        return Budget(str(name), low, high, at, loc, at_loc)

    def require(self, children: list) -> Require:
        return Require([c for c in children if isinstance(c, Budget)],
                       _tok_loc(self.path, children[0]))

    def atom(self, children: list) -> Atom:
        (tok,) = children
        loc, end = _tok_loc(self.path, tok), _tok_end(self.path, tok)
        text = str(tok)
        if tok.type in ("INT", "FLOAT", "SI_NUMBER", "SIZE", "DEPTH"):
            _bounded(text, loc)
        kind = {"NAME": "name", "INT": "int", "FLOAT": "float", "SI_NUMBER": "si",
                "STRING": "str", "SIZE": "size", "DEPTH": "depth"}[tok.type]
        if kind == "name":
            value: Any = text
        elif kind == "int":
            value = int(text)
        elif kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise SpecError(f"the number {text} is too large", loc)
        elif kind == "si":
            value = Decimal(text[:-1]) * SI_SUFFIX[text[-1]]
        elif kind == "str":
            value = _unquote(text, loc)
        elif kind == "size":
            value = tuple(int(p) for p in text.split("x"))
        elif text[1:].isdigit():  # depth: x3
            value = int(text[1:])
        elif text.isidentifier():  # a name that merely starts like one: x2net
            kind, value = "name", text
        else:
            raise SpecError(f"the number of blocks must be x<integer>, got '{text}'", loc,
                            hint="e.g. x3")
        return Atom(kind, value, text, loc, end)

    def call(self, children: list) -> CallNode:
        head, close = children[0], children[-1]
        args = [c for c in children[1:-1] if not isinstance(c, Token)]
        return CallNode(str(head)[:-1], args, _tok_loc(self.path, head),
                        _tok_end(self.path, close))

    def named_arg(self, children: list) -> Tuple[Optional[str], Any, Loc]:
        name, _eq, value = children
        return (str(name), value, _tok_loc(self.path, name))

    def positional_arg(self, children: list) -> Tuple[Optional[str], Any, Loc]:
        (value,) = children
        return (None, value, value.loc)

    def tuple(self, children: list) -> TupleNode:
        items = [c for c in children[1:-1] if not isinstance(c, Token)]
        return TupleNode(items, _tok_loc(self.path, children[0]),
                         _tok_end(self.path, children[-1]))

    def list(self, children: list) -> ListNode:
        items = [c for c in children[1:-1] if not isinstance(c, Token)]
        return ListNode(items, _tok_loc(self.path, children[0]),
                        _tok_end(self.path, children[-1]))


def _integer_range(text: str, loc: Loc) -> Tuple[int, int]:
    lo_text, hi_text = text.split("..")
    if not (lo_text.isdigit() and hi_text.isdigit()):
        raise SpecError(f"a range of choices takes integers, got '{text}'", loc,
                        hint="list other values: {1e-3, 2e-3}")
    _bounded(text, loc)
    lo, hi = int(lo_text), int(hi_text)
    if hi < lo:
        raise SpecError(f"the range {text} is empty: {lo} is above {hi}", loc,
                        hint=f"write {{{hi}..{lo}}}")
    if hi - lo + 1 > MAX_RANGE:
        raise SpecError(f"the range {text} has {hi - lo + 1} values, more than {MAX_RANGE}",
                        loc, hint="a choice lists the values worth trying")
    return lo, hi


def _si_number(text: str, loc: Loc) -> Atom:
    """One end of a budget window (``3.8G``) as the atom the reader expects."""
    _bounded(text, loc)
    if text[-1] in SI_SUFFIX:
        return Atom("si", Decimal(text[:-1]) * SI_SUFFIX[text[-1]], text, loc, loc)
    if text.isdigit():
        return Atom("int", int(text), text, loc, loc)
    return Atom("float", float(text), text, loc, loc)


# No setting takes a number this long; Python also refuses to read ints past 4300 digits.
MAX_NUMBER_CHARS = 100


def _bounded(text: str, loc: Loc) -> None:
    if len(text) > MAX_NUMBER_CHARS:
        raise SpecError(f"the number {text[:20]}... ({len(text)} characters) is too long",
                        loc, hint="no setting takes a number this large")


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


def _unquote(text: str, loc: Loc) -> str:
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]  # the grammar guarantees a character after a backslash
            if nxt not in _ESCAPES:
                raise SpecError(f"unknown escape '\\{nxt}' in a string",
                                Loc(loc.path, loc.line, loc.column + 1 + i),
                                hint='use \\" \\\\ \\n or \\t')
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)



"""The ``.mf`` front end: Lark grammar -> syntax tree -> IR, with located errors.

Two steps. The grammar (``grammar/metaformer.lark``) fixes the syntax: lines of items
inside ``{ }`` blocks, values, calls, tuples and lists. This module then reads the lines
by keyword and builds the IR, so that unknown keywords, duplicates and values of the
wrong type are reported at their own line and column with a hint. Names of components
(mixers, norms, ...) and value ranges are left to :mod:`mfdsl.checks`.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from lark import Lark, Token, Transformer
from lark.exceptions import (LarkError, UnexpectedCharacters, UnexpectedEOF,
                             UnexpectedInput, UnexpectedToken, VisitError)

from ..errors import Loc, SpecError, nearest
from ..ir import (Call, DownsampleSpec, EvalSpec, LimitsSpec, ModelSpec, RecipeSpec,
                  StageSpec, default_downsample, default_stem)
from ..resources import grammar_file

__all__ = ["parse_mf", "MODEL_KEYWORDS", "STAGE_SETTINGS", "RESERVED_NAMES"]

# Bare words that are values, not names.
RESERVED_NAMES = {"true": True, "false": False, "none": None}

MODEL_KEYWORDS = (
    "input", "classes", "stem", "norm", "mlp", "mlp_ratio", "mlp_act", "mlp_bias",
    "layer_scale", "res_scale", "downsample", "stage", "output_norm", "head", "eval",
    "limits", "train",
)
# Settings a stage line may carry; the same words at model level set every stage.
STAGE_SETTINGS = ("norm", "mlp", "mlp_ratio", "mlp_act", "mlp_bias", "layer_scale",
                  "res_scale", "downsample")
MLP_KEYS = ("ratio", "act", "bias")
DOWNSAMPLE_KEYS = ("pre_norm", "post_norm")
CONV_ARGS = {"kernel": int, "stride": int, "padding": int, "bias": bool}
EVAL_KEYS = ("crop_pct", "interpolation", "mean", "std")
LIMIT_KEYS = {"params": "max_params", "macs": "max_macs",
              "max_params": "max_params", "max_macs": "max_macs"}
SI_SUFFIX = {"K": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12}


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


Item = Union[Atom, Width, CallNode, TupleNode, ListNode, Block]


# --- the parser -----------------------------------------------------------------------

class _NewlinesInBrackets:
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
def _parser() -> Lark:
    with open(grammar_file("metaformer.lark"), encoding="utf-8") as f:
        grammar = f.read()
    return Lark(grammar, parser="lalr", lexer="contextual", postlex=_NewlinesInBrackets(),
                propagate_positions=True, maybe_placeholders=False)


def parse_mf(text: str, path: str) -> ModelSpec:
    """Parse ``.mf`` source into a ModelSpec; every problem is a located SpecError."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, path) from None
    except LarkError as exc:  # any other parser failure still gets a location
        raise SpecError(f"cannot parse the spec: {exc}", Loc(path, 1, 1)) from None
    try:
        model = _ToSyntax(path).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, SpecError):
            raise exc.orig_exc from None
        raise
    except RecursionError:
        raise SpecError("the spec is nested too deeply", Loc(path, 1, 1)) from None
    return _Interpreter(path).model(*model)


def _tok_loc(path: str, tok: Token) -> Loc:
    return Loc(path, tok.line, tok.column)


def _tok_end(path: str, tok: Token) -> Loc:
    return Loc(path, tok.end_line, tok.end_column)


class _ToSyntax(Transformer):
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
        lines = [c for c in children[1:-1] if isinstance(c, Line)]
        return Block(lines, _tok_loc(self.path, lb), _tok_end(self.path, rb))

    def line(self, children: list) -> Line:
        return Line(list(children))

    def width(self, children: list) -> Width:
        at, num = children
        _bounded(str(num), _tok_loc(self.path, num))
        return Width(int(num), _tok_loc(self.path, at), _tok_end(self.path, num))

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


# --- syntax errors in user terms ------------------------------------------------------

_TERMINAL_TEXT = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "SI_NUMBER": "a number like 2G",
    "STRING": "a quoted string", "SIZE": "a size like 3x224x224",
    "DEPTH": "a block count like x3", "CALL_OPEN": "a call like layernorm(...)",
    "_NL": "a new line", "$END": "the end of the file", "MODEL": "'model'",
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "COMMA": "','", "EQUAL": "'='", "AT": "'@'",
}
_VALUE_START = {"NAME", "INT", "FLOAT", "SI_NUMBER", "STRING", "SIZE", "DEPTH", "CALL_OPEN",
                "LPAR", "LSQB"}
_ORDER = ["value", "NAME", "EQUAL", "COMMA", "RPAR", "RSQB", "LBRACE", "RBRACE", "AT",
          "MODEL", "_NL", "$END"]


def _expected_text(names: Sequence[str]) -> str:
    names = set(names)
    if "MODEL" in names:  # before the model block only blank lines may come
        names.discard("_NL")
    parts = []
    if {"NAME", "INT", "FLOAT", "STRING", "LPAR"} <= names:
        names -= _VALUE_START
        parts.append("a value")
    rank = {n: i for i, n in enumerate(_ORDER)}
    for n in sorted(names, key=lambda n: (rank.get(n, 99), n)):
        parts.append(_TERMINAL_TEXT.get(n, n.lower()))
    if not parts:
        return "something else"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def _found_text(tok: Token) -> str:
    t = tok.type
    if t == "$END":
        return "end of file"
    if t == "_NL":
        return "end of line"
    if t == "NAME":
        return f"name '{tok}'"
    if t in ("INT", "FLOAT", "SI_NUMBER"):
        return f"number {tok}"
    if t == "STRING":
        return f"string {tok}"
    if t == "CALL_OPEN":
        return f"call '{tok}...)'"
    if t == "MODEL":
        return "'model'"
    return f"'{tok}'"


def _open_brackets(text: str) -> List[Tuple[str, int, int]]:
    """Brackets still open at the end of ``text`` (ignoring strings and comments)."""
    stack: List[Tuple[str, int, int]] = []
    line, col, i, quote = 1, 0, 0, None
    pairs = {")": "(", "]": "[", "}": "{"}
    while i < len(text):
        ch = text[i]
        col += 1
        if ch == "\n":
            line, col, quote = line + 1, 0, None
        elif quote:
            if ch == "\\":
                i += 1
                col += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            while i + 1 < len(text) and text[i + 1] != "\n":
                i += 1
        elif ch in "([{":
            stack.append((ch, line, col))
        elif ch in ")]}":
            if stack and stack[-1][0] == pairs[ch]:
                stack.pop()
        i += 1
    return stack


def _end_of_text(text: str, path: str) -> Loc:
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    col = len(stripped) - (stripped.rfind("\n") + 1) + 1
    return Loc(path, line, col)


def _lexer_allowed(exc: UnexpectedCharacters) -> set:
    """What the parser accepts where the lexer failed.

    The contextual lexer's own list always contains the newline token (the postlexer
    must see it), even where the grammar takes no newline: keep only what the parser
    state accepts.
    """
    allowed = set(exc.allowed or ())
    try:
        state = exc.state
        accepts = set(state.parse_conf.parse_table.states[state.position])
    except Exception:  # noqa: BLE001 - older Lark: no parser state on the error
        return allowed
    return (allowed & accepts) or allowed


def _syntax_error(exc: UnexpectedInput, text: str, path: str) -> SpecError:
    if isinstance(exc, UnexpectedCharacters):
        exc.allowed = _lexer_allowed(exc)
        loc = Loc(path, exc.line, exc.column)
        pos = exc.pos_in_stream
        word = text[pos:].split(None, 1)[0] if text[pos:].strip() else text[pos]
        ch = text[pos]
        if ch in "\"'":
            return SpecError("this string is not closed on its line", loc,
                             hint=f"add the closing {ch}")
        if ch in "-+." and pos > 0 and (text[pos - 1].isalnum() or text[pos - 1] == "_"):
            start = pos
            while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_-+."):
                start -= 1
            word = text[start:pos] + _word_at(text, pos)
            return SpecError(f"unexpected '{ch}' in '{word}': names cannot contain '{ch}'", loc,
                             hint=f'quote text like this: "{word}"')
        if ch.isdigit() or ch in "+-.":
            word = _word_at(text, pos)
            return SpecError(f"malformed number '{word}'", loc,
                             hint="numbers look like 3, 0.15, 1e-6 or 2G; sizes like "
                                  "3x224x224")
        if ch.isalpha() or ch == "_":
            word = _word_at(text, pos)
            return SpecError(f"unexpected '{word}'", loc,
                             hint=f"expected {_expected_text(exc.allowed or ())}")
        shown = repr(ch) if not ch.isprintable() or ch.isspace() else f"'{ch}'"
        hint = None
        if ch == ":":
            hint = "settings are written `key value`, without ':'"
        elif ch == ";":
            hint = "put each setting on its own line (or separate them with spaces)"
        elif exc.allowed:
            hint = f"expected {_expected_text(exc.allowed)}"
        return SpecError(f"unexpected character {shown}", loc, hint=hint)

    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        expected = set(getattr(exc, "accepts", None) or exc.expected or ())
        if tok.type == "$END":
            loc = _end_of_text(text, path)
        else:
            loc = Loc(path, tok.line, tok.column)
        msg = f"unexpected {_found_text(tok)}; expected {_expected_text(expected)}"
        return SpecError(msg, loc, hint=_token_hint(tok, expected, text, loc))

    if isinstance(exc, UnexpectedEOF):
        loc = _end_of_text(text, path)
        expected = set(exc.expected or ())
        return SpecError(f"unexpected end of file; expected {_expected_text(expected)}", loc,
                         hint=_token_hint(Token("$END", ""), expected, text, loc))
    return SpecError(f"cannot parse the spec: {exc}",
                     Loc(path, getattr(exc, "line", 1) or 1, getattr(exc, "column", 1) or 1))


def _word_at(text: str, pos: int) -> str:
    end = pos
    while end < len(text) and not text[end].isspace() and text[end] not in "()[]{},=#":
        end += 1
    return text[pos:end] or text[pos]


def _token_hint(tok: Token, expected: set, text: str, loc: Loc) -> Optional[str]:
    if "MODEL" in expected:
        return "a spec is one block: model <name> { ... }"
    if tok.type == "EQUAL":
        return "settings are written `key value`; '=' is only for call arguments, " \
               "as in layernorm(eps=1e-6)"
    if tok.type == "COMMA" and "_NL" in expected:
        return "separate settings with spaces or new lines, not commas"
    if tok.type == "LBRACE" and "CALL_OPEN" not in expected:
        return "a '{' block must follow a keyword such as train, eval or limits"
    closers = {"RPAR": "(", "RSQB": "[", "RBRACE": "{"}
    for name, opener in closers.items():
        if name in expected:
            before = text[: _offset(text, loc)]
            still = [b for b in _open_brackets(before) if b[0] == opener]
            if still:
                _, line, col = still[-1]
                return f"the '{opener}' at line {line}, column {col} is not closed"
    if tok.type == "NAME" and "NAME" not in expected and "_NL" in expected:
        return "start each setting on a new line"
    return None


def _offset(text: str, loc: Loc) -> int:
    lines = text.split("\n")
    return sum(len(s) + 1 for s in lines[: loc.line - 1]) + loc.column - 1


# --- interpretation: lines -> IR ------------------------------------------------------

def _describe(item: Any) -> str:
    if isinstance(item, Atom):
        if item.kind == "name":
            return {"true": "true", "false": "false", "none": "none"}.get(
                item.value, f"the name '{item.value}'")
        if item.kind == "str":
            return f"the string {item.text}"
        if item.kind == "size":
            return f"the size {item.text}"
        if item.kind == "depth":
            return f"the block count {item.text}"
        return f"the number {item.text}"
    if isinstance(item, Width):
        return f"the width @{item.value}"
    if isinstance(item, CallNode):
        return f"the call {item.name}(...)"
    if isinstance(item, TupleNode):
        return "a tuple ( ... )"
    if isinstance(item, ListNode):
        return "a list [ ... ]"
    if isinstance(item, Block):
        return "a { ... } block"
    return "nothing"


def _is_word(item: Any, *words: str) -> bool:
    return isinstance(item, Atom) and item.kind == "name" and (not words or item.value in words)


class _Cursor:
    """Reads the items of one line (or of a block's lines run together) left to right."""

    def __init__(self, items: List[Any], end: Loc) -> None:
        self.items = items
        self.i = 0
        self.end = end  # where "missing value" errors point

    def peek(self) -> Any:
        return self.items[self.i] if self.i < len(self.items) else None

    def take(self, what: str, after: str) -> Any:
        item = self.peek()
        if item is None:
            raise SpecError(f"expected {what} after {after}", self.end)
        self.i += 1
        return item

    def done(self) -> bool:
        return self.i >= len(self.items)


def _line_end(line: Line) -> Loc:
    last = line.items[-1]
    return last.end


class _Seen:
    """Remembers where each setting was first written, to report duplicates."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.where: Dict[str, Loc] = {}

    def add(self, key: str, loc: Loc, shown: Optional[str] = None) -> None:
        if key in self.where:
            first = self.where[key]
            raise SpecError(f"{shown or key} is set twice {self.what}", loc,
                            hint=f"first set at line {first.line}, column {first.column}; "
                                 "remove one")
        self.where[key] = loc


@dataclass
class _Setting:
    value: Any
    loc: Loc  # where the value was written


@dataclass
class _DownsampleSetting:
    """`downsample none` (changes is None) or changes to a DownsampleSpec."""

    changes: Optional[Dict[str, _Setting]]
    loc: Loc


@dataclass
class _StageLine:
    loc: Loc
    mixers: List[Call]
    mixers_loc: Loc
    depth: int
    depth_loc: Loc
    width: int
    width_loc: Loc
    settings: Dict[str, Any] = field(default_factory=dict)


class _Interpreter:
    def __init__(self, path: str) -> None:
        self.path = path

    # -- the model ---------------------------------------------------------------------

    def model(self, kw_loc: Loc, name: Atom, body: Block) -> ModelSpec:
        spec = ModelSpec(name=name.value)
        spec.locs[""] = kw_loc
        spec.locs["name"] = name.loc
        seen = _Seen("in the model")
        defaults: Dict[str, Any] = {}  # model-level stage settings
        stages: List[_StageLine] = []
        for line in body.lines:
            head = line.items[0]
            if not _is_word(head) or head.value in RESERVED_NAMES:
                raise SpecError(f"expected a setting name at the start of the line, got "
                                f"{_describe(head)}", head.loc,
                                hint="each line starts with a keyword such as stage, "
                                     "input or train")
            key = head.value
            cur = _Cursor(line.items[1:], _line_end(line))
            if key == "stage":
                stages.append(self.stage_line(head, cur))
                continue
            if key not in MODEL_KEYWORDS:
                raise self.unknown_model_keyword(head)
            if key in STAGE_SETTINGS:
                self.stage_setting(head, cur, defaults, seen, allow_downsample=True)
                self.end_of_line(cur, key)
                continue
            seen.add(key, head.loc)
            if key == "input":
                self.input(spec, cur, head)
            elif key == "classes":
                item = cur.take("the number of classes", "classes")
                spec.num_classes = self.integer(item, "classes")
                spec.locs["num_classes"] = item.loc
            elif key == "stem":
                spec.stem = self.downsample(head, cur, default_stem(), allow_none=False).changes
                spec.locs["stem"] = head.loc
            elif key in ("output_norm", "head"):
                item = cur.take(f"a {'norm' if key == 'output_norm' else 'head'}", key)
                setattr(spec, key, self.component(item, key))
                spec.locs[key] = item.loc
            elif key == "eval":
                spec.eval = self.eval_block(head, cur)
                spec.locs["eval"] = head.loc
            elif key == "limits":
                spec.limits = self.limits_block(head, cur)
                spec.locs["limits"] = head.loc
            elif key == "train":
                spec.recipe = self.train_block(head, cur)
                spec.locs["recipe"] = head.loc
            self.end_of_line(cur, key)
        spec.stages = [self.build_stage(i, s, defaults) for i, s in enumerate(stages)]
        if stages:
            spec.locs["stages"] = stages[0].loc
        return spec

    def unknown_model_keyword(self, head: Atom) -> SpecError:
        word = head.value
        recipe_fields = _recipe_fields()
        if word in recipe_fields:
            hint = f"'{word}' is a training setting: put it inside train {{ ... }}"
        elif word in EVAL_KEYS:
            hint = f"'{word}' is an evaluation setting: put it inside eval {{ ... }}"
        elif word in LIMIT_KEYS:
            hint = f"'{word}' is a size limit: put it inside limits {{ ... }}"
        elif word in MLP_KEYS or word in DOWNSAMPLE_KEYS:
            owner = "mlp" if word in MLP_KEYS else "downsample"
            hint = f"'{word}' belongs after '{owner}', as in `{owner} {word} ...`"
        else:
            guess = nearest(word, MODEL_KEYWORDS)
            hint = f"did you mean '{guess}'?" if guess else \
                "known settings: " + ", ".join(MODEL_KEYWORDS)
        return SpecError(f"unknown setting '{word}'", head.loc, hint=hint)

    def end_of_line(self, cur: _Cursor, key: str) -> None:
        extra = cur.peek()
        if extra is not None:
            hint = None
            if _is_word(extra) and extra.value in MODEL_KEYWORDS:
                hint = f"start '{extra.value}' on a new line"
            raise SpecError(f"unexpected {_describe(extra)} after the {key} setting",
                            extra.loc, hint=hint)

    def input(self, spec: ModelSpec, cur: _Cursor, head: Atom) -> None:
        item = cur.take("the input size, like 3x224x224", "input")
        if isinstance(item, Atom) and item.kind == "size" and len(item.value) in (2, 3):
            dims = item.value
            if len(dims) == 3:
                spec.in_chans = dims[0]
                spec.locs["in_chans"] = item.loc
            spec.img_size = (dims[-2], dims[-1])
            spec.locs["img_size"] = item.loc
            return
        raise SpecError(f"input must be channels x height x width like 3x224x224, got "
                        f"{_describe(item)}", item.loc)

    # -- stages --------------------------------------------------------------------------

    def stage_line(self, head: Atom, cur: _Cursor) -> _StageLine:
        example = "e.g. `stage sepconv x3 @64`"
        pattern = cur.take("a token mixer", "stage")
        if isinstance(pattern, ListNode):
            if not pattern.items:
                raise SpecError("the mixer list is empty", pattern.loc,
                                hint="name at least one mixer, e.g. [sepconv, attention]")
            mixers = [self.component(m, "mixer") for m in pattern.items]
        elif (isinstance(pattern, Atom) and pattern.kind == "depth") or isinstance(pattern, Width):
            raise SpecError("expected a token mixer before the block count", pattern.loc,
                            hint=example)
        else:
            mixers = [self.component(pattern, "mixer")]
        depth_item = cur.take("the number of blocks, like x3", "the token mixer")
        if not (isinstance(depth_item, Atom) and depth_item.kind == "depth"):
            hint = example
            if isinstance(depth_item, Atom) and depth_item.kind == "int":
                hint = f"write x{depth_item.value}"
            raise SpecError(f"expected the number of blocks as x<integer>, got "
                            f"{_describe(depth_item)}", depth_item.loc, hint=hint)
        width_item = cur.take("the width, like @64", "the block count")
        if not isinstance(width_item, Width):
            hint = example
            if isinstance(width_item, Atom) and width_item.kind == "int":
                hint = f"write @{width_item.value}"
            raise SpecError(f"expected the stage width as @<integer>, got "
                            f"{_describe(width_item)}", width_item.loc, hint=hint)
        st = _StageLine(head.loc, mixers, pattern.loc, depth_item.value, depth_item.loc,
                        width_item.value, width_item.loc)
        seen = _Seen("in this stage")
        while not cur.done():
            item = cur.peek()
            if isinstance(item, Block):  # settings continued in a { } block
                cur.i += 1
                if not cur.done():
                    raise SpecError(f"unexpected {_describe(cur.peek())} after the stage's "
                                    "{ } block", cur.peek().loc)
                for line in item.lines:
                    sub = _Cursor(line.items, _line_end(line))
                    while not sub.done():
                        self.stage_setting(sub.take("a setting", "{"), sub, st.settings, seen,
                                           allow_downsample=True)
                break
            cur.i += 1
            self.stage_setting(item, cur, st.settings, seen, allow_downsample=True)
        return st

    def stage_setting(self, head: Any, cur: _Cursor, out: Dict[str, Any], seen: _Seen,
                      allow_downsample: bool) -> None:
        """Read one stage setting (`norm X`, `mlp ratio 4 ...`, ...) into ``out``."""
        if not _is_word(head) or head.value not in STAGE_SETTINGS:
            if _is_word(head):
                guess = nearest(head.value, STAGE_SETTINGS + MLP_KEYS)
                if head.value in MLP_KEYS:
                    hint = f"write `mlp {head.value} ...`"
                elif guess in MLP_KEYS:
                    hint = f"did you mean `mlp {guess}`?"
                elif guess:
                    hint = f"did you mean '{guess}'?"
                else:
                    hint = "stage settings: " + ", ".join(STAGE_SETTINGS)
                raise SpecError(f"unknown stage setting '{head.value}'", head.loc, hint=hint)
            raise SpecError(f"expected a stage setting, got {_describe(head)}", head.loc,
                            hint="stage settings: " + ", ".join(STAGE_SETTINGS))
        key = head.value
        if key == "mlp":
            n = 0
            while _is_word(cur.peek(), *MLP_KEYS):
                sub = cur.take("", "")
                self.one_stage_setting("mlp_" + sub.value, sub, cur, out, seen,
                                       shown=f"mlp {sub.value}")
                n += 1
            if n == 0:
                nxt = cur.peek()
                raise SpecError("expected ratio, act or bias after mlp",
                                nxt.loc if nxt is not None else cur.end,
                                hint="e.g. `mlp ratio 4 act starrelu bias false`")
            return
        if key == "downsample":
            seen.add("downsample", head.loc)
            out["downsample"] = self.downsample(head, cur, None, allow_none=True)
            return
        self.one_stage_setting(key, head, cur, out, seen)

    def one_stage_setting(self, key: str, head: Atom, cur: _Cursor, out: Dict[str, Any],
                          seen: _Seen, shown: Optional[str] = None) -> None:
        shown = shown or key
        seen.add(key, head.loc, shown)
        if key in ("norm", "mlp_act"):
            item = cur.take("a norm" if key == "norm" else "an activation", shown)
            value: Any = self.component(item, shown)
        elif key == "mlp_ratio":
            item = cur.take("a number", shown)
            value = self.number(item, shown)
        elif key == "mlp_bias":
            item = cur.take("true or false", shown)
            value = self.boolean(item, shown)
        else:  # layer_scale / res_scale
            item = cur.take("a number (the initial value) or none", shown)
            value = self.number(item, shown, allow_none=True)
        out[key] = _Setting(value, item.loc)

    def build_stage(self, i: int, line: _StageLine, defaults: Dict[str, Any]) -> StageSpec:
        st = StageSpec(depth=line.depth, width=line.width, mixers=line.mixers)
        st.locs.update({"": line.loc, "depth": line.depth_loc, "width": line.width_loc,
                        "mixers": line.mixers_loc})
        for source in (defaults, line.settings):
            for key, s in source.items():
                if key == "downsample":
                    continue
                setattr(st, key, s.value)
                st.locs[key] = s.loc
        if i == 0:
            if "downsample" in line.settings:
                raise SpecError("the first stage is downsampled by the stem", line.settings[
                    "downsample"].loc, hint="set it with `stem conv(...)` instead")
            return st
        model_ds = defaults.get("downsample")
        base: Optional[DownsampleSpec] = default_downsample()
        if model_ds is not None:
            base = self.apply_downsample(default_downsample(), model_ds)
            st.locs["downsample"] = model_ds.loc
        own = line.settings.get("downsample")
        if own is not None:
            base = self.apply_downsample(base if base is not None else default_downsample(), own)
            st.locs["downsample"] = own.loc
        st.downsample = base
        return st

    @staticmethod
    def apply_downsample(base: DownsampleSpec, s: _DownsampleSetting) -> Optional[DownsampleSpec]:
        if s.changes is None:
            return None
        ds = DownsampleSpec(kernel=base.kernel, stride=base.stride, padding=base.padding,
                            bias=base.bias, pre_norm=base.pre_norm, post_norm=base.post_norm)
        ds.locs = dict(base.locs)
        ds.locs[""] = s.loc
        for key, setting in s.changes.items():
            setattr(ds, key, setting.value)
            ds.locs[key] = setting.loc
        return ds

    # -- downsampling ------------------------------------------------------------------

    def downsample(self, head: Atom, cur: _Cursor, base: Optional[DownsampleSpec],
                   allow_none: bool) -> Any:
        """`conv(kernel=..) pre_norm X post_norm Y` or `none`.

        With ``base`` (the stem) returns a _DownsampleSetting whose ``changes`` is the
        finished DownsampleSpec; without, the changes to apply later.
        """
        what = head.value
        nxt = cur.peek()
        if _is_word(nxt, "none"):
            cur.i += 1
            if not allow_none:
                raise SpecError(f"the {what} cannot be none", nxt.loc,
                                hint="a model needs a stem; change its conv or norms instead")
            return _DownsampleSetting(None, head.loc)
        changes: Dict[str, _Setting] = {}
        seen = _Seen(f"in this {what}")
        n = 0
        if isinstance(nxt, CallNode) or _is_word(nxt, "conv"):
            cur.i += 1
            n += 1
            name = nxt.name if isinstance(nxt, CallNode) else nxt.value
            if name != "conv":
                raise SpecError(f"a {what} is a strided conv: expected conv(...), got "
                                f"{name}(...)", nxt.loc,
                                hint="e.g. conv(kernel=3, stride=2, padding=1)")
            for arg_name, value, loc in (nxt.args if isinstance(nxt, CallNode) else []):
                if arg_name is None:
                    raise SpecError("conv arguments are written name=value", loc,
                                    hint="e.g. conv(kernel=3, stride=2, padding=1)")
                if arg_name not in CONV_ARGS:
                    guess = nearest(arg_name, CONV_ARGS)
                    raise SpecError(f"unknown conv argument '{arg_name}'", loc,
                                    hint=f"did you mean '{guess}'?" if guess else
                                    "conv takes kernel, stride, padding, bias")
                seen.add(arg_name, loc, f"conv argument '{arg_name}'")
                shown = f"{what} {arg_name}"
                v = (self.boolean(value, shown) if CONV_ARGS[arg_name] is bool
                     else self.integer(value, shown))
                changes[arg_name] = _Setting(v, value.loc)
        while _is_word(cur.peek(), *DOWNSAMPLE_KEYS):
            key_item = cur.take("", "")
            n += 1
            seen.add(key_item.value, key_item.loc)
            item = cur.take("a norm or none", key_item.value)
            value = None if _is_word(item, "none") else self.component(item, key_item.value)
            changes[key_item.value] = _Setting(value, item.loc)
        if n == 0:
            bad = cur.peek()
            raise SpecError(f"expected conv(...), pre_norm, post_norm{' or none' if allow_none else ''}"
                            f" after {what}", bad.loc if bad is not None else cur.end,
                            hint="e.g. `downsample conv(kernel=3, stride=2, padding=1) "
                                 "pre_norm layernorm(eps=1e-6)`")
        if base is None:
            return _DownsampleSetting(changes, head.loc)
        done = self.apply_downsample(base, _DownsampleSetting(changes, head.loc))
        return _DownsampleSetting(done, head.loc)  # type: ignore[arg-type]

    # -- eval / limits / train blocks ------------------------------------------------------

    def block_pairs(self, head: Atom, cur: _Cursor) -> Iterator[Tuple[Atom, _Cursor]]:
        """Yield (key, cursor positioned at its value) for a `key { k v  k v ... }` block."""
        blk = cur.take("a { ... } block", head.value)
        if not isinstance(blk, Block):
            raise SpecError(f"expected '{{' after {head.value}, got {_describe(blk)}", blk.loc,
                            hint=f"e.g. {head.value} {{ {_EXAMPLES[head.value]} }}")
        for line in blk.lines:
            sub = _Cursor(line.items, _line_end(line))
            while not sub.done():
                key = sub.take("", "")
                if isinstance(key, CallNode):
                    raise SpecError(f"'{key.name}(' reads as a call: put a space before '(' "
                                    f"to give {key.name} a tuple", key.loc,
                                    hint=f"{key.name} (...)")
                if not _is_word(key) or key.value in RESERVED_NAMES:
                    raise SpecError(f"expected {head.value} setting name, got "
                                    f"{_describe(key)}", key.loc)
                yield key, sub

    def eval_block(self, head: Atom, cur: _Cursor) -> EvalSpec:
        ev = EvalSpec()
        ev.locs[""] = head.loc
        seen = _Seen("in eval")
        for key, sub in self.block_pairs(head, cur):
            k = key.value
            if k not in EVAL_KEYS:
                guess = nearest(k, EVAL_KEYS)
                raise SpecError(f"unknown eval setting '{k}'", key.loc,
                                hint=f"did you mean '{guess}'?" if guess else
                                "eval settings: " + ", ".join(EVAL_KEYS))
            seen.add(k, key.loc)
            item = sub.take("a value", k)
            if k == "crop_pct":
                value: Any = self.number(item, k)
            elif k == "interpolation":
                value = self.text(item, k)
            else:
                value = self.number_tuple(item, k)
            setattr(ev, k, value)
            ev.locs[k] = item.loc
        return ev

    def limits_block(self, head: Atom, cur: _Cursor) -> LimitsSpec:
        lim = LimitsSpec()
        lim.locs[""] = head.loc
        seen = _Seen("in limits")
        for key, sub in self.block_pairs(head, cur):
            k = key.value
            if k not in LIMIT_KEYS:
                guess = nearest(k, LIMIT_KEYS)
                raise SpecError(f"unknown limit '{k}'", key.loc,
                                hint=f"did you mean '{guess}'?" if guess else
                                "limits: params, macs")
            fname = LIMIT_KEYS[k]
            seen.add(fname, key.loc, k)
            item = sub.take("a count like 2G", k)
            setattr(lim, fname, self.count(item, k))
            lim.locs[fname] = item.loc
        return lim

    def train_block(self, head: Atom, cur: _Cursor) -> RecipeSpec:
        r = RecipeSpec()
        r.locs[""] = head.loc
        types = _recipe_fields()
        seen = _Seen("in train")
        for key, sub in self.block_pairs(head, cur):
            k = key.value
            if k not in types:
                guess = nearest(k, types)
                raise SpecError(f"unknown train setting '{k}'", key.loc,
                                hint=f"did you mean '{guess}'?" if guess else
                                "train settings: " + ", ".join(types))
            seen.add(k, key.loc)
            item = sub.take("a value", k)
            kind = types[k]
            optional = kind.startswith("Optional[")
            base = kind[len("Optional["):-1] if optional else kind
            shown = f"train {k}"
            if optional and _is_word(item, "none"):
                value: Any = None
            elif base == "int":
                value = self.integer(item, shown)
            elif base == "float":
                value = self.number(item, shown)
            elif base == "bool":
                value = self.boolean(item, shown)
            elif base == "str":
                value = self.text(item, shown, none_ok=optional)
            elif base.startswith("Tuple["):
                value = self.number_tuple(item, shown)
            else:  # a field type this reader does not know: take the literal
                value = self.literal(item)
            setattr(r, k, value)
            r.locs[k] = item.loc
        return r

    # -- values ----------------------------------------------------------------------------

    def integer(self, item: Any, what: str) -> int:
        if isinstance(item, Atom) and item.kind == "int":
            return item.value
        hint = None
        if isinstance(item, Atom) and item.kind == "float" and float(item.value).is_integer():
            hint = f"write {int(item.value)}"
        raise SpecError(f"{what} must be an integer, got {_describe(item)}", item.loc, hint=hint)

    def number(self, item: Any, what: str, allow_none: bool = False) -> Any:
        if isinstance(item, Atom) and item.kind in ("int", "float"):
            return item.value
        if allow_none and _is_word(item, "none"):
            return None
        raise SpecError(f"{what} must be a number{' or none' if allow_none else ''}, got "
                        f"{_describe(item)}", item.loc)

    def boolean(self, item: Any, what: str) -> bool:
        if _is_word(item, "true", "false"):
            return item.value == "true"
        raise SpecError(f"{what} must be true or false, got {_describe(item)}", item.loc)

    def text(self, item: Any, what: str, none_ok: bool = False) -> str:
        if isinstance(item, Atom) and (item.kind == "str" or
                                       (item.kind == "name" and item.value not in RESERVED_NAMES)):
            return item.value
        raise SpecError(f"{what} must be a name or a quoted string"
                        f"{' (or none)' if none_ok else ''}, got {_describe(item)}", item.loc)

    def number_tuple(self, item: Any, what: str) -> Tuple[Any, ...]:
        if isinstance(item, TupleNode):
            return tuple(self.number(x, f"each value of {what}") for x in item.items)
        if isinstance(item, CallNode):  # `mean(0.5, 0.5, 0.5)` written without a space
            raise SpecError(f"{what} takes a tuple: put a space before '('", item.loc,
                            hint=f"{what} (...)")
        raise SpecError(f"{what} must be a tuple of numbers like (0.5, 0.5, 0.5), got "
                        f"{_describe(item)}", item.loc)

    def count(self, item: Any, what: str) -> int:
        if isinstance(item, Atom) and item.kind == "int":
            value: Any = item.value
        elif isinstance(item, Atom) and item.kind == "si":
            value = item.value
        elif isinstance(item, Atom) and item.kind == "float":
            try:
                value = Decimal(item.text)
            except InvalidOperation:  # pragma: no cover - the grammar only lets numbers in
                value = Decimal(item.value)
        else:
            raise SpecError(f"{what} must be a count like 25M, 2G or 1T, got "
                            f"{_describe(item)}", item.loc)
        if value != int(value):
            raise SpecError(f"{what} must be a whole number, got {item.text}", item.loc)
        return int(value)

    def component(self, item: Any, what: str) -> Call:
        """A component reference: `layernorm` or `layernorm(eps=1e-6)`."""
        if isinstance(item, Atom) and item.kind == "name" and item.value not in RESERVED_NAMES:
            c = Call(name=item.value)
            c.locs[""] = item.loc
            return c
        if isinstance(item, CallNode):
            return self.call(item)
        hint = None
        if _is_word(item, "none"):
            hint = "write identity for no norm / activation" if what != "head" else \
                "a model needs a head; `linear` is the plainest"
        raise SpecError(f"expected a component name for {what}, like layernorm or "
                        f"attention(head_dim=32), got {_describe(item)}", item.loc, hint=hint)

    def call(self, node: CallNode) -> Call:
        c = Call(name=node.name)
        c.locs[""] = node.loc
        for name, value, loc in node.args:
            if name is None:
                raise SpecError(f"arguments of {node.name}(...) are written name=value", loc,
                                hint=f"e.g. {node.name}(eps=1e-6)" if node.name.endswith("norm")
                                else None)
            if name in c.args:
                first = c.locs[name]
                raise SpecError(f"argument '{name}' is given twice", loc,
                                hint=f"first given at line {first.line}, column {first.column}")
            c.args[name] = self.literal(value)
            c.locs[name] = loc
        return c

    def literal(self, item: Any) -> Any:
        """A call argument: a literal, a nested component, a tuple or a list."""
        if isinstance(item, Atom):
            if item.kind == "name":
                return RESERVED_NAMES.get(item.value, item.value)
            if item.kind in ("int", "float", "str"):
                return item.value
            if item.kind == "si":
                raise SpecError("K/M/G/T suffixes are only for limits", item.loc,
                                hint="write the number in full, e.g. 2e9")
            raise SpecError(f"{_describe(item)} cannot be an argument value", item.loc)
        if isinstance(item, CallNode):
            return self.call(item)
        if isinstance(item, TupleNode):
            return tuple(self.literal(x) for x in item.items)
        if isinstance(item, ListNode):
            return [self.literal(x) for x in item.items]
        raise SpecError(f"{_describe(item)} cannot be an argument value", item.loc)


_EXAMPLES = {
    "eval": "crop_pct 0.95  interpolation bicubic",
    "limits": "params 2G  macs 50G",
    "train": "optimizer adamw  lr 4e-3  epochs 300",
}


@lru_cache(maxsize=1)
def _recipe_fields() -> Dict[str, str]:
    """RecipeSpec field -> its annotation text ("int", "Optional[str]", ...)."""
    hints = {f.name: f.type for f in fields(RecipeSpec) if f.name != "locs"}
    return {k: (v if isinstance(v, str) else typing.get_type_hints(RecipeSpec)[k].__name__)
            .replace("typing.", "") for k, v in hints.items()}

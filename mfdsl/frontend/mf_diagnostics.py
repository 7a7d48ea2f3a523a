"""Syntax errors of ``.mf`` files in the user's terms.

Lark reports what it expected in terms of terminals; this module turns that into a
message and a hint. Hints for common mistakes are data (Lark's ``match_examples``
pattern): each label maps to a few inputs that make the same mistake, and the parser
state the user's error stopped in picks the label. No parse-table internals are read.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Set, Tuple

from lark import Token
from lark.exceptions import (UnexpectedCharacters, UnexpectedEOF, UnexpectedInput,
                             UnexpectedToken)

from ..errors import Loc, SpecError
from .mf_syntax import parser

# --- syntax errors in user terms ------------------------------------------------------

_TERMINAL_TEXT = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "SI_NUMBER": "a number like 2G",
    "STRING": "a quoted string", "SIZE": "a size like 3x224x224",
    "DEPTH": "a block count like x3", "CALL_OPEN": "a call like layernorm(...)",
    "_NL": "a new line", "$END": "the end of the file", "MODEL": "'model'",
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "COMMA": "','", "EQUAL": "'='", "AT": "'@'",
    "REF": "a named choice like $w", "X_REF": "a named depth like x$d",
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
        # where a value stands, a design space's choice ('{a | b}') or named choice ('$w')
        # may too: they are kinds of value, not other things to expect (docs/spaces.md)
        names -= _VALUE_START | {"LBRACE", "REF"}
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


def _accepted(text: str, pos: int, fallback: Set[str]) -> Set[str]:
    """What the parser accepts at ``pos``, asked through Lark's public interactive parser.

    The contextual lexer's own list of allowed terminals always contains the newline (the
    postlexer must see it), even where the grammar takes none; the parser fed the text
    before ``pos`` says what it really accepts there.
    """
    try:
        ip = parser().parse_interactive(text[:pos])
        ip.exhaust_lexer()
        return set(ip.accepts()) or fallback
    except UnexpectedInput:  # the text before pos is itself wrong: keep the lexer's list
        return fallback


# Hints for common mistakes, as data: label -> inputs that make the mistake. The parser
# state the user's error stopped in picks the label (Lark's match_examples). Lark compares
# states with their stack depth, which depends on how many lines come before the mistake
# in each block: ``{M}`` and ``{B}`` mark where 0, 1 or 2 filler lines are tried (model
# level and inside a block), and every example is also tried after a header comment.
HINT_EXAMPLES: Dict[str, List[str]] = {
    "settings are written `key value`; '=' is only for call arguments, as in "
    "layernorm(eps=1e-6)": [
        "model m {\n{M}  classes=10\n}\n",
        "model m {\n{M}  classes 10 norm=layernorm\n}\n",
        "model m {\n{M}  stage pooling x1 @8 norm=layernorm\n}\n",
        "model m {\n{M}  train { lr=1e-3 }\n}\n",
        "model m {\n{M}  train { epochs 3  lr=1e-3 }\n}\n",
        "model m {\n{M}  train {\n{B}    lr=1e-3\n  }\n}\n",
    ],
    "separate settings with spaces or new lines, not commas": [
        "model m {\n{M}  classes 10,\n}\n",
        "model m {\n{M}  train { lr 1e-3, epochs 3 }\n}\n",
        "model m {\n{M}  train { epochs 3  lr 1e-3, }\n}\n",
        "model m {\n{M}  train {\n{B}    epochs 3,\n  }\n}\n",
        "model m {\n{M}  stage pooling x1 @8, norm layernorm\n}\n",
        "model m {\n{M}  stage pooling x1 @8 norm layernorm,\n}\n",
    ],
    "the model needs a name: model <name> { ... }": [
        "model {\n{M}}\n",
        "model {\n{M}  stage pooling x1 @8\n}\n",
    ],
    "a spec is one block: model <name> { ... }": [
        "", "stage pooling x1 @8\n", "modle m {\n}\n", "model m {\n}\nmodel n {\n}\n",
        "classes 10\n",
    ],
}
_FILL = {"{M}": "  input 3x32x32\n", "{B}": "    warmup_epochs 1\n"}
# Characters the lexer cannot start any token with, and what writing them usually means
# (Lark's lexer errors carry no comparable parser state, so these are keyed by character).
CHARACTER_HINTS: Dict[str, str] = {
    ":": "settings are written `key value`, without ':'",
    ";": "put each setting on its own line (or separate them with spaces)",
}
# A word holding one of these is a path written without quotes (finetune_from runs/x):
# the hint quotes the whole word for the user.
PATH_CHARACTERS = "/\\"
PATH_HINT = 'a path is text: quote it, like this: "{word}"'


def _variants(example: str) -> List[str]:
    out = [example]
    for mark, line in _FILL.items():
        out = [v.replace(mark, line * n) for v in out for n in ((0, 1, 2) if mark in v else (0,))]
    return out + ["# header\n" + v for v in out]


@lru_cache(maxsize=1)
def _examples() -> Dict[str, List[str]]:
    return {label: [v for ex in exs for v in _variants(ex)]
            for label, exs in HINT_EXAMPLES.items()}


def _example_hint(exc: UnexpectedInput) -> Optional[str]:
    """The label of the first example failing in the same parser state (and token)."""
    try:
        # use_accepts=False: Lark 1.3's accepts comparison fails on its own debug message.
        return exc.match_examples(parser().parse, _examples(), use_accepts=False)
    except UnexpectedInput:  # pragma: no cover - match_examples catches the examples' own
        return None


def syntax_error(exc: UnexpectedInput, text: str, path: str) -> SpecError:
    if isinstance(exc, UnexpectedCharacters):
        exc.allowed = _accepted(text, exc.pos_in_stream, set(exc.allowed or ()))
        loc = Loc(path, exc.line, exc.column)
        pos = exc.pos_in_stream
        word = text[pos:].split(None, 1)[0] if text[pos:].strip() else text[pos]
        ch = text[pos]
        if ch in "\"'":
            return SpecError("this string is not closed on its line", loc,
                             hint=f"add the closing {ch}")
        whole = _word_around(text, pos)
        if any(c in whole for c in PATH_CHARACTERS):
            return SpecError(f"unexpected '{ch}' in '{whole}': a path must be quoted", loc,
                             hint=PATH_HINT.format(word=whole))
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
        hint = CHARACTER_HINTS.get(ch)
        if hint is None and exc.allowed:
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
        return SpecError(msg, loc, hint=_token_hint(exc, tok, expected, text, loc))

    if isinstance(exc, UnexpectedEOF):
        loc = _end_of_text(text, path)
        expected = set(exc.expected or ())
        return SpecError(f"unexpected end of file; expected {_expected_text(expected)}", loc,
                         hint=_token_hint(exc, Token("$END", ""), expected, text, loc))
    return SpecError(f"cannot parse the spec: {exc}",
                     Loc(path, getattr(exc, "line", 1) or 1, getattr(exc, "column", 1) or 1))


def _word_around(text: str, pos: int) -> str:
    """The whitespace-delimited word ``pos`` falls in (a path, a name with a dot)."""
    start = pos
    while start > 0 and not text[start - 1].isspace() and text[start - 1] not in "([{,=\"'":
        start -= 1
    return text[start:pos] + _word_at(text, pos)


def _word_at(text: str, pos: int) -> str:
    end = pos
    while end < len(text) and not text[end].isspace() and text[end] not in "()[]{},=#":
        end += 1
    return text[pos:end] or text[pos]


def _token_hint(exc: UnexpectedInput, tok: Token, expected: set, text: str,
                loc: Loc) -> Optional[str]:
    label = _example_hint(exc)
    if label is not None:
        return label
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



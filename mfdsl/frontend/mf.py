"""The ``.mf`` front end: text -> syntax tree -> IR, every problem a located SpecError.

Three concerns, three modules: :mod:`.mf_syntax` (the Lark parser and the syntax tree),
:mod:`.mf_diagnostics` (syntax errors in the user's terms, hints as data) and
:mod:`.mf_reader` (keywords -> IR fields, from the vocabulary in :mod:`.mf_vocab`).
"""
from __future__ import annotations

from lark.exceptions import LarkError, UnexpectedInput, VisitError

from ..errors import Loc, SpecError
from ..ir import ModelSpec
from .mf_diagnostics import syntax_error
from .mf_reader import Interpreter
from .mf_space import MfSpaceSyntax, first_space_node, read_space_syntax
from .mf_syntax import ToSyntax, parser
from .mf_vocab import MODEL_KEYWORDS, RESERVED_NAMES, STAGE_SETTING_WORDS

__all__ = ["parse_mf", "parse_mf_space", "MODEL_KEYWORDS", "STAGE_SETTINGS", "RESERVED_NAMES"]
STAGE_SETTINGS = STAGE_SETTING_WORDS


def parse_mf(text: str, path: str) -> ModelSpec:
    """Parse ``.mf`` source into a ModelSpec; every problem is a located SpecError."""
    kw_loc, name, body = _syntax(text, path)
    found = first_space_node(body)
    if found is not None:
        raise SpecError("this is a design space (it holds a choice, a $name or a require "
                        "line), not one model", found.loc,
                        hint="read it with `mfdsl space` or `mfdsl sample` (docs/spaces.md)")
    return Interpreter(path).model(kw_loc, name, body)


def parse_mf_space(text: str, path: str) -> MfSpaceSyntax:
    """Parse ``.mf`` source that may hold choices (docs/spaces.md)."""
    return read_space_syntax(path, *_syntax(text, path))


def _syntax(text: str, path: str) -> tuple:
    try:
        tree = parser().parse(text)
    except UnexpectedInput as exc:
        raise syntax_error(exc, text, path) from None
    except LarkError as exc:  # any other parser failure still gets a location
        raise SpecError(f"cannot parse the spec: {exc}", Loc(path, 1, 1)) from None
    try:
        model = ToSyntax(path).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, SpecError):
            raise exc.orig_exc from None
        raise
    except RecursionError:
        raise SpecError("the spec is nested too deeply", Loc(path, 1, 1)) from None
    return model

"""Command-line options generated from metadata: one per recipe setting that declares a
flag (:class:`mfdsl.ir.Setting`, ``cli``/``cli_off``) and one per run option
(:class:`mfdsl.run_options.RunOption`). A new recipe field or run option needs no edit
here; ``cli/run_cmds.py`` only applies these to its commands."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import click

from ..errors import SpecError
from .common import parse_img_size


def _parse_betas(text: Optional[str]) -> Optional[Tuple[float, float]]:
    if text is None:
        return None
    try:
        vals = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not two numbers like 0.9,0.999",
                                 param_hint="'--betas'") from None
    if len(vals) != 2:
        raise click.BadParameter(f"'{text}' is not two numbers like 0.9,0.999",
                                 param_hint="'--betas'")
    return vals  # type: ignore[return-value]


class _OrNone(click.ParamType):
    """A number, or ``none`` (``off``) for an optional setting, as a spec file writes it."""

    def __init__(self, number: type) -> None:
        self.number = number
        self.name = f"{number.__name__}|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("none", "off"):
            return "none"
        try:
            return self.number(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number or none", param, ctx)


def _recipe_options(f):
    """One option per recipe setting that declares a flag (mfdsl.ir.RecipeSpec metadata),
    plus --no-X where ``cli_off``: a new recipe field needs no edit here."""
    from ..ir import BOOL, FLOAT, FLOATS, INT, STR, RecipeSpec, settings_of

    opts = []
    for name, meta, default in settings_of(RecipeSpec):
        if not meta.cli:
            continue
        shown = "none" if default is None else (",".join(map(str, default))
                                                 if isinstance(default, tuple) else default)
        help_text = f"{meta.doc} Recipe {name}; default {shown}."
        if meta.optional and meta.cli_off and meta.type != STR:
            help_text += " 0 or none: off."
        if meta.choices:
            kind: Any = click.Choice(list(meta.choices))
        elif meta.type in (INT, FLOAT):
            number = int if meta.type == INT else float
            kind = _OrNone(number) if meta.optional else number
        elif meta.type == BOOL:  # pragma: no cover - no recipe bool has a generated flag
            kind = bool
        else:
            kind = str
        if meta.type == FLOATS:
            help_text += " Write it as numbers separated by commas, e.g. 0.9,0.999."
        opts.append(click.option(meta.cli, name, type=kind, default=None, help=help_text))
        if meta.cli_off:
            off = "none" if meta.optional else "0"
            opts.append(click.option("--no-" + meta.cli[2:], "no_" + name, is_flag=True,
                                     help=f"Set recipe {name} to {off}."))
    for opt in reversed(opts):
        f = opt(f)
    return f


class _OptionValueError(click.BadParameter):
    """A value outside its option's field, worded as every range error: ``--world-size
    must be >= 1, got 0 (hint: allowed: >= 1)``."""

    def format_message(self) -> str:
        return self.message


class _FieldType(click.ParamType):
    """An option's value: read as its field's type, then checked against the field
    (``checks.values.check_value``) under the option's spelling."""

    def __init__(self, meta: Any) -> None:
        from ..fields import FLOAT, INT, SIZE

        self.meta = meta
        self.name = {INT: "integer", FLOAT: "float", SIZE: "size"}.get(meta.type, "text")

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from ..checks.values import check_value
        from ..fields import FLOAT, INT, SIZE

        meta = self.meta
        if isinstance(value, str):
            try:
                if meta.type == INT:
                    value = int(value)
                elif meta.type == FLOAT:
                    value = float(value)
            except ValueError:
                pass  # check_value words it: "--workers must be an integer, got 'a'"
            if meta.type == SIZE:
                value = parse_img_size(value, minimum=int(meta.min or 1))
        try:
            return check_value(meta, value, meta.name_flag, None)
        except SpecError as err:
            raise _OptionValueError(err.message + (f" (hint: {err.hint})" if err.hint else ""),
                                    ctx=ctx, param=param) from None


def _click_option(name: str, meta: Any, default: Any) -> Any:
    """The click option of one run option, from its metadata alone."""
    from ..fields import BOOL

    decls = ([meta.short] if meta.short else []) + [meta.flag, name]
    kw: Dict[str, Any] = {"help": meta.doc, "metavar": meta.metavar}
    if meta.type == BOOL:
        kw.update(default=default, is_flag=True)
    elif meta.flag_value is not None:
        kw.update(flag_value=meta.flag_value, default=default)
    else:
        kw["default"] = None if meta.multiple else default
        if meta.bare_value is not None:
            kw.update(is_flag=False, flag_value=meta.bare_value)
        if meta.choices:
            kw["type"] = click.Choice(list(meta.choices))
        elif meta.path:
            kw["type"] = click.Path(file_okay=meta.path != "dir", dir_okay=meta.path != "file")
        elif meta.type != "str":
            kw["type"] = _FieldType(meta)
        kw["multiple"] = meta.multiple
    if meta.default_text is not None:
        kw["show_default"] = meta.default_text
    elif default is not None and not meta.multiple and meta.flag_value is None:
        kw["show_default"] = True
    return click.option(*decls, **kw)


def _run_options(cls: type, *, after: Optional[str] = None, insert: Any = None):
    """The click options of every flagged field of ``cls`` (run_options metadata), in
    field order; ``insert`` (a decorator: the recipe options) goes after field ``after``."""
    from ..run_options import options_of

    def deco(f):
        parts = []
        for name, meta, default in options_of(cls):
            if meta.flag:
                parts.append(_click_option(name, meta, default))
            if name == after:
                parts.append(insert)
        for part in reversed(parts):
            f = part(f)
        return f
    return deco


def _options_from(cls: type, kw: Dict[str, Any], **filled: Any) -> Any:
    """``cls`` from the command's keyword arguments (its flagged fields) and ``filled``."""
    from ..run_options import options_of

    values = {name: tuple(kw[name]) if meta.multiple else kw[name]
              for name, meta, _ in options_of(cls) if meta.flag}
    return cls(**values, **filled)

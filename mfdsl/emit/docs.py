"""The docs' tables, generated from the IR's field metadata, the run options' metadata
(:mod:`mfdsl.run_options`) and the exit codes (:data:`mfdsl.errors.EXIT_CODES`).

``python -m mfdsl.emit.docs --write`` rewrites the parts of ``docs/*.md`` between
``<!-- generated: NAME -->`` and ``<!-- end generated -->``; a test checks they are up to
date, so the docs cannot drift from the readers, printers, schema and checks.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..ir import (BOOL, COUNT, FLOAT, FLOATS, INT, SIZE, STR, EvalSpec, LimitsSpec,
                  RecipeSpec, Setting, StageSpec, call_data, settings_of)

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"
_BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def _value_text(meta: Setting) -> str:
    if meta.is_component:
        text = f"{'an' if meta.type[0] in 'aeiou' else 'a'} {meta.type}"
    elif meta.choices:
        text = ", ".join(f"`{c}`" for c in meta.choices)
    else:
        text = {INT: "integer", FLOAT: "number", BOOL: "`true` / `false`", STR: "text",
                COUNT: "count (`2G`)", FLOATS: "numbers `(a, b, ...)`"}.get(meta.type, meta.type)
    rng = "" if meta.choices else meta.range_text()
    if rng:
        text += f", {rng}"
    if meta.optional:
        text += ", or `none`"
    return text


def _default_text(v: Any) -> str:
    if v is None:
        return "`none`"
    data = call_data(v) if hasattr(v, "args") else v
    if isinstance(data, dict):
        (name, args), = data.items()
        inner = ", ".join(f"{k}={_plain(x)}" for k, x in args.items())
        return f"`{name}({inner})`"
    return f"`{_plain(data)}`"


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "(" + ", ".join(_plain(x) for x in v) + ")"
    return str(v)


def _default_of(meta: Setting, default: Any) -> str:
    if meta.type == COUNT:
        from .mf import _count_text

        return f"`{_count_text(default)}`"
    return _default_text(default)


def settings_table(cls: type, names: Optional[List[str]] = None, mf_key: bool = True) -> str:
    """Markdown table of the settings of ``cls``: key, value, default, meaning."""
    rows = ["| key | value | default | meaning | flag |", "|---|---|---|---|---|"]
    for name, meta, default in settings_of(cls):
        if names is not None and name not in names:
            continue
        key = meta.key or name
        if meta.group:
            key = f"{meta.group} {key}" if mf_key else f"{meta.group}.{key}"
        rows.append(f"| `{key}` | {_value_text(meta)} | {_default_of(meta, default)} | "
                    f"{meta.doc} | {f'`{meta.cli}`' if meta.cli else ''} |")
    return "\n".join(rows) + "\n"


def _option_value_text(meta: Any) -> str:
    """What a run option takes: `flag`, a type with its range, or its choices."""
    if meta.type == BOOL or meta.flag_value is not None:
        return "switch" if "/" in meta.flag else "flag"
    if meta.choices:
        return ", ".join(f"`{c}`" for c in meta.choices)
    if meta.type == SIZE:
        text = "size (`224`, `256x192`)"
    elif meta.path:
        text = "path"
    elif meta.metavar:
        text = "`" + meta.metavar.replace("|", "\\|") + "`"
    else:
        text = {INT: "integer", FLOAT: "number", STR: "text"}.get(meta.type, meta.type)
    rng = meta.range_text()
    if rng:
        text += f", {rng}" + (" each side" if meta.type == SIZE else "")
    if meta.multiple:
        text += ", repeatable"
    if meta.bare_value is not None:
        text += f"; alone: `{meta.bare_value}`"
    return text


def _option_default_text(meta: Any, default: Any) -> str:
    if meta.default_text is not None:
        return meta.default_text
    if default is None or default == () or meta.flag_value is not None:
        return ""
    if meta.type == BOOL:
        on, _, off = meta.flag.partition("/")
        return f"`{on if default else off}`" if off else ""
    return f"`{_plain(default)}`"


def options_table(cls: type) -> str:
    """Markdown table of the command-line options of a run options class
    (:mod:`mfdsl.run_options`): option, value, default, meaning."""
    from ..run_options import options_of

    rows = ["| option | value | default | meaning |", "|---|---|---|---|"]
    for _, meta, default in options_of(cls):
        if not meta.flag:
            continue
        flag = f"`{meta.short}`, `{meta.flag}`" if meta.short else f"`{meta.flag}`"
        doc = meta.doc + (" Only with `--dry-run`." if meta.dry_run_only
                          and "--dry-run" not in meta.doc else "")
        rows.append(f"| {flag} | {_option_value_text(meta)} | "
                    f"{_option_default_text(meta, default)} | {doc} |")
    return "\n".join(rows) + "\n"


def exit_codes_table() -> str:
    """The run commands' exit codes (:data:`mfdsl.errors.EXIT_CODES`)."""
    from ..errors import EXIT_CODES

    rows = ["| exit code | meaning | commands |", "|---|---|---|"]
    rows += [f"| {e.code} | {e.meaning} | {', '.join(e.commands)} |" for e in EXIT_CODES]
    return "\n".join(rows) + "\n"


def tables() -> Dict[str, str]:
    from ..run_options import EvalOptions, TrainOptions

    stage = [n for n, _, _ in settings_of(StageSpec) if n not in ("depth", "width")]
    return {
        "stage-settings": settings_table(StageSpec, stage),
        "eval": settings_table(EvalSpec),
        "limits": settings_table(LimitsSpec),
        "train": settings_table(RecipeSpec),
        "train-options": options_table(TrainOptions),
        "eval-options": options_table(EvalOptions),
        "exit-codes": exit_codes_table(),
    }


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current table."""
    current = tables()

    def sub(m: "re.Match[str]") -> str:
        name = m.group(2)
        if name not in current:
            raise KeyError(f"unknown generated table {name!r}")
        return m.group(1) + current[name] + m.group(4)

    return _BLOCK.sub(sub, text)


def main(argv: Optional[List[str]] = None) -> int:
    """``--write``: refresh the tables in docs/; ``--check``: exit 1 if any is stale."""
    args = list(sys.argv[1:] if argv is None else argv)
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            stale.append(path)
            if args[:1] == ["--write"]:
                path.write_text(new, encoding="utf-8")
    if args[:1] == ["--check"] and stale:
        print("stale tables in " + ", ".join(map(str, stale)) +
              "; run python -m mfdsl.emit.docs --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

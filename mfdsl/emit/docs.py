"""The language docs' tables, generated from the IR's field metadata.

``python -m mfdsl.emit.docs --write`` rewrites the parts of ``docs/*.md`` between
``<!-- generated: NAME -->`` and ``<!-- end generated -->``; a test checks they are up to
date, so the docs cannot drift from the readers, printers, schema and checks.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..ir import (BOOL, COUNT, FLOAT, FLOATS, INT, STR, EvalSpec, LimitsSpec, RecipeSpec,
                  Setting, StageSpec, call_data, settings_of)

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


def tables() -> Dict[str, str]:
    stage = [n for n, _, _ in settings_of(StageSpec) if n not in ("depth", "width")]
    return {
        "stage-settings": settings_table(StageSpec, stage),
        "eval": settings_table(EvalSpec),
        "limits": settings_table(LimitsSpec),
        "train": settings_table(RecipeSpec),
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

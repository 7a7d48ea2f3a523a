"""The canonical ``.mf`` printer (``mfdsl fmt``).

One layout for every spec: sections in a fixed order, stage lines aligned in columns,
only settings that differ from the IR defaults, and a setting shared by every stage
written once at model level. Floats print in their shortest form that parses back to the
same value. ``parse_mf(to_mf(s)) == s`` for every spec and ``to_mf`` is idempotent.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..frontend.mf_vocab import BLOCKS, CONV_ARGS, DOWNSAMPLE_NORMS
from ..ir import (COUNT, STAGE_SETTINGS, Call, DenseSpec, DownsampleSpec, ModelSpec, Setting,
                  StageSpec, default_dense_norm, default_downsample, default_stem, setting_of,
                  settings_of)

__all__ = ["to_mf", "format_mf", "format_float", "format_value"]

INDENT = "  "
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = ("true", "false", "none")
_DEPTH = re.compile(r"x[0-9]+")  # lexes as a block count, so such strings are quoted
_SI = (("T", 10 ** 12), ("G", 10 ** 9), ("M", 10 ** 6), ("K", 10 ** 3))
# The stage settings in the order they are printed (model-level when shared): the IR's.
_STAGE_FIELDS = STAGE_SETTINGS
_ONE_LINE_MAX = 88  # a { } block fits on one line up to this width and 4 entries


def to_mf(spec: ModelSpec) -> str:
    """The canonical ``.mf`` text of ``spec``; SpecError if its name has no .mf form."""
    if not isinstance(spec.name, str) or not _IDENT.fullmatch(spec.name):
        from ..errors import SpecError

        raise SpecError(f"model name {spec.name!r} cannot be written in .mf", spec.loc("name"),
                        hint="a .mf model name is letters, digits and _, not starting with "
                             "a digit; rename the model")
    lines: List[str] = [f"model {spec.name} {{"]
    body: List[str] = []
    size = "x".join(str(v) for v in (spec.in_chans, *spec.img_size))
    body.append(f"input {size}")
    body.append(f"classes {format_value(spec.num_classes)}")
    if spec.stem != default_stem():
        body.append("stem " + _downsample_text(spec.stem, default_stem()))

    defaults = StageSpec()
    shared: Dict[str, Any] = {}
    for name in _STAGE_FIELDS:
        values = [getattr(st, name) for st in spec.stages]
        if values and all(v == values[0] for v in values) and values[0] != getattr(defaults, name):
            shared[name] = values[0]
    body.extend(_settings_text(shared))  # shared by every stage: said once

    later = [st.downsample for st in spec.stages[1:]]
    model_ds: Optional[DownsampleSpec] = default_downsample()
    model_ds_text = None
    if later and all(d == later[0] for d in later) and later[0] != default_downsample():
        model_ds = later[0]
        model_ds_text = "none" if model_ds is None else _downsample_text(model_ds,
                                                                         default_downsample())
        body.append(f"downsample {model_ds_text}")
    body.extend(_stage_lines(spec.stages, shared, model_ds))

    if spec.output_norm != ModelSpec().output_norm:
        body.append(f"output_norm {_call_text(spec.output_norm)}")
    if spec.head != ModelSpec().head:
        body.append(f"head {_call_text(spec.head)}")
    if spec.dense is not None:
        body.append(dense_text(spec.dense))
    for keyword, (fld, cls) in BLOCKS.items():
        node = getattr(spec, fld)
        if node is not None:  # a recipe is printed even when it is all defaults
            body.extend(_block(keyword, _block_entries(node, cls()), always=fld == "recipe"))
    lines.extend(INDENT + b for b in body)
    lines.append("}")
    return "\n".join(lines) + "\n"


def dense_text(d: DenseSpec) -> str:
    """The `dense ...` line."""
    parts = ["dense outputs (" + ", ".join(str(i) for i in d.outputs) + ")"]
    if d.norm != default_dense_norm():
        parts.append(f"norm {_call_text(d.norm)}")
    parts.extend(f"stage{i} {_call_text(c)}" for i, c in sorted(d.norms.items()))
    return " ".join(parts)


def format_mf(text: str, path: str) -> str:
    """Reformat ``.mf`` source canonically, keeping the comment lines above ``model``.

    Comments elsewhere are not part of the IR and are dropped.
    """
    from ..frontend.mf import parse_mf

    return with_header(text, to_mf(parse_mf(text, path)))


def with_header(text: str, out: str) -> str:
    """``out`` under the comment lines above ``model`` in ``text``."""
    header: List[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and header):
            header.append(stripped)
        elif not stripped:
            continue
        else:
            break
    while header and not header[-1]:
        header.pop()
    return ("\n".join(header) + "\n" + out) if header else out


# --- values ---------------------------------------------------------------------------

def format_float(x: float) -> str:
    """Shortest text that parses back to ``x``, always with a '.' or an exponent."""
    text = repr(float(x))
    if "e" in text:
        mant, exp = text.split("e")
        return f"{mant}e{int(exp)}"
    if text in ("inf", "-inf", "nan"):
        raise ValueError(f"{x} has no .mf spelling")
    if abs(x) >= 0.01:  # 300.0 reads better than 3e2
        return text
    sci = _scientific(x)
    return sci if len(sci) < len(text) else text


def _scientific(x: float) -> str:
    for digits in range(17):
        s = f"{x:.{digits}e}"
        if float(s) == x:
            mant, exp = s.split("e")
            return f"{mant}e{int(exp)}"
    return repr(x)  # pragma: no cover - 17 significant digits always round trip


def format_value(v: Any) -> str:
    """A call-argument value: literal, nested component, tuple or list."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "none"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, str):
        return _word(v)
    if isinstance(v, Call):
        return f"{v.name}({_args_text(v.args)})"
    if isinstance(v, tuple):
        return "(" + ", ".join(format_value(x) for x in v) + ")"
    if isinstance(v, list):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    raise TypeError(f"cannot print {type(v).__name__} in a .mf spec")


def _word(s: str) -> str:
    """A bare name where it parses back as the same string, else a quoted string."""
    if _IDENT.fullmatch(s) and s not in _RESERVED and not _DEPTH.fullmatch(s):
        return s
    return _quote(s)


def _quote(s: str) -> str:
    body = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{body}"'


def _args_text(args: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in args.items())


def _call_text(c: Call) -> str:
    """A component in a field that always holds a Call: bare name when it has no args."""
    return f"{c.name}({_args_text(c.args)})" if c.args else c.name


# --- stages -----------------------------------------------------------------------------

def setting_text(meta: Setting, v: Any) -> str:
    """A setting's value as written in .mf, by its declared type."""
    if v is None:
        return "none"
    if meta.is_component:
        return _call_text(v)
    if meta.type == COUNT:
        return _count_text(v)
    return _field_text(v)


def _settings_text(values: Dict[str, Any]) -> List[str]:
    """Stage settings as `key value` groups (`mlp ratio 2 act gelu`), in canonical order."""
    parts: List[str] = []
    groups: Dict[str, List[str]] = {}
    for name in _STAGE_FIELDS:
        if name not in values:
            continue
        meta = setting_of(StageSpec, name)
        text = f"{meta.key or name} {setting_text(meta, values[name])}"
        if meta.group:
            if meta.group not in groups:
                groups[meta.group] = []
                parts.append(meta.group)  # placeholder, filled below
            groups[meta.group].append(text)
        else:
            parts.append(text)
    return [f"{p} " + " ".join(groups[p]) if p in groups else p for p in parts]


def _stage_lines(stages: Sequence[StageSpec], shared: Dict[str, Any],
                 model_ds: Optional[DownsampleSpec]) -> List[str]:
    defaults = StageSpec()
    rows: List[Tuple[str, str, str, str]] = []
    for i, st in enumerate(stages):
        own: Dict[str, Any] = {}
        for name in _STAGE_FIELDS:
            base = shared[name] if name in shared else getattr(defaults, name)
            if getattr(st, name) != base:
                own[name] = getattr(st, name)
        parts = _settings_text(own)
        if i > 0 and st.downsample != model_ds:
            if st.downsample is None:
                parts.append("downsample none")
            else:
                base_ds = model_ds if model_ds is not None else default_downsample()
                parts.append("downsample " + _downsample_text(st.downsample, base_ds))
        if len(st.mixers) == 1:
            pattern = _call_text(st.mixers[0])
        else:
            pattern = "[" + ", ".join(_call_text(m) for m in st.mixers) + "]"
        rows.append((pattern, f"x{format_value(st.depth)}", f"@{format_value(st.width)}",
                     "  ".join(parts)))
    if not rows:
        return []
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    out = []
    for pattern, depth, width, settings in rows:
        line = f"stage {pattern.ljust(w0)} {depth.ljust(w1)} {width.ljust(w2)}"
        if settings:
            line += "  " + settings
        out.append(line.rstrip())
    return out


def _downsample_text(ds: DownsampleSpec, base: DownsampleSpec) -> str:
    """`conv(...) pre_norm X post_norm Y`, stating only what differs from ``base``."""
    conv = {k: getattr(ds, k) for k in CONV_ARGS if getattr(ds, k) != getattr(base, k)}
    parts = []
    if conv:
        parts.append(f"conv({_args_text(conv)})")
    for name in DOWNSAMPLE_NORMS:
        v = getattr(ds, name)
        if v != getattr(base, name):
            parts.append(f"{name} {'none' if v is None else _call_text(v)}")
    return " ".join(parts) if parts else "conv"


# --- { } blocks -------------------------------------------------------------------------

def _field_text(v: Any) -> str:
    if isinstance(v, list):
        v = tuple(v)
    return format_value(v)


def _block_entries(node: Any, default: Any) -> List[Tuple[str, str]]:
    """`key value` of every setting of ``node`` that differs from ``default``."""
    return [(meta.key or name, setting_text(meta, getattr(node, name)))
            for name, meta, _ in settings_of(type(node))
            if getattr(node, name) != getattr(default, name)]


def _count_text(v: Any) -> str:
    """2000000000 -> 2G, 1500000 -> 1.5M; small or odd counts stay plain."""
    if isinstance(v, bool) or not isinstance(v, int):
        return format_value(v)
    for suffix, scale in _SI:
        if abs(v) >= scale:
            q = (Decimal(v) / scale).normalize()
            text = format(q, "f")
            if len(text.replace(".", "")) <= 4 and v > 0:
                return text + suffix
            break
    return str(v)


def _block(keyword: str, entries: List[Tuple[str, str]], always: bool = False) -> List[str]:
    if not entries:
        return [f"{keyword} {{}}"] if always else []
    one = f"{keyword} {{ " + "  ".join(f"{k} {v}" for k, v in entries) + " }"
    if len(entries) <= 4 and len(INDENT + one) <= _ONE_LINE_MAX:
        return [one]
    width = max(len(k) for k, _ in entries)
    return ([f"{keyword} {{"] + [f"{INDENT}{k.ljust(width)} {v}" for k, v in entries]
            + ["}"])

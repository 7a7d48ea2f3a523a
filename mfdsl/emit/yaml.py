"""Print the IR as canonical ``.yaml``, and generate the format's JSON Schema.

``to_yaml(spec)`` writes only what differs from the IR defaults (plus ``model`` and
``stages``); ``parse_yaml(to_yaml(s)) == s`` for every spec. Settings that every stage
shares go under ``defaults:`` once.

``python -m mfdsl.emit.yaml --write-schema`` regenerates ``grammar/metaformer.schema.json``
from the IR defaults and the built-in components of the registry (a test checks that the
committed file is up to date).
"""
from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, Dict, List, Optional

from ..ir import (
    STAGE_SETTINGS, Call, DownsampleSpec, EvalSpec, LimitsSpec, ModelSpec, RecipeSpec,
    StageSpec, call_data, default_dense_norm, default_downsample, default_stem, setting_data,
    setting_of, settings_of,
)

LINE_WIDTH = 96

# --- scalars ---------------------------------------------------------------------------

_PLAIN = re.compile(r"^\$?[A-Za-z_][A-Za-z0-9_.\-/]*$")  # $name: a design space's
_RESERVED = {"true", "false", "null", "y", "n", "yes", "no", "on", "off"}


def scalar(v: Any) -> str:
    """One YAML scalar that reads back (also with plain PyYAML) as the same value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        text = repr(v)
        # YAML 1.1 readers only take exponents after a dot: 1e-06 -> 1.0e-06.
        if "e" in text and "." not in text.split("e")[0]:
            m, e = text.split("e")
            text = f"{m}.0e{e}"
        return text
    if isinstance(v, str):
        if _PLAIN.match(v) and v.lower() not in _RESERVED:
            return v
        return json.dumps(v)  # a JSON string is a valid YAML double-quoted scalar
    raise TypeError(f"cannot print {type(v).__name__} as a YAML scalar")


def flow(v: Any) -> str:
    """A value in YAML flow style: scalars, [lists] and {mappings}."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{scalar(k)}: {flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(flow(x) for x in v) + "]"
    return scalar(v)


# --- IR -> data ------------------------------------------------------------------------

def _opt_call(c: Optional[Call]) -> Any:
    return None if c is None else call_data(c)


def downsample_data(ds: DownsampleSpec, base: DownsampleSpec) -> Dict[str, Any]:
    """The fields of ``ds`` that differ from ``base``."""
    out: Dict[str, Any] = {}
    for k, meta, _ in settings_of(DownsampleSpec):
        v = getattr(ds, k)
        if v != getattr(base, k):
            out[meta.key or k] = _opt_call(v) if meta.is_component else v
    return out


def _stage_settings(st: StageSpec) -> Dict[str, Any]:
    """Stage settings other than mixer/depth/width/downsample, as YAML data; a grouped
    setting (``mlp_ratio``) is keyed (group, key)."""
    out: Dict[str, Any] = {}
    for name in STAGE_SETTINGS:
        meta = setting_of(StageSpec, name)
        key = meta.key or name
        out[(meta.group, key) if meta.group else key] = setting_data(getattr(st, name))
    return out


def _put(d: Dict[str, Any], key: Any, v: Any) -> None:
    if isinstance(key, tuple):
        d.setdefault(key[0], {})[key[1]] = v
    else:
        d[key] = v


def spec_data(spec: ModelSpec) -> Dict[str, Any]:
    """The canonical YAML document of ``spec`` as plain data (key order = print order)."""
    d: Dict[str, Any] = {"model": spec.name}
    base = ModelSpec()
    inp: Dict[str, Any] = {}
    if spec.in_chans != base.in_chans:
        inp["channels"] = spec.in_chans
    if tuple(spec.img_size) != tuple(base.img_size):
        h, w = spec.img_size
        inp["size"] = h if h == w else [h, w]
    if inp:
        d["input"] = inp
    if spec.num_classes != base.num_classes:
        d["classes"] = spec.num_classes
    stem = downsample_data(spec.stem, default_stem())
    if stem:
        d["stem"] = stem

    ref = _stage_settings(StageSpec())
    per_stage = [_stage_settings(st) for st in spec.stages]
    defaults: Dict[str, Any] = {}
    shared = set()
    if len(spec.stages) > 1:
        for key, dv in ref.items():
            vals = [s[key] for s in per_stage]
            if all(v == vals[0] for v in vals) and vals[0] != dv:
                _put(defaults, key, vals[0])
                shared.add(key)
    later = spec.stages[1:]
    ds_shared = False
    if len(later) > 1 and all(st.downsample == later[0].downsample for st in later):
        ds = later[0].downsample
        if ds != default_downsample():
            defaults["downsample"] = None if ds is None else downsample_data(
                ds, default_downsample())
            ds_shared = True
    if defaults:
        d["defaults"] = defaults

    stages = []
    for i, (st, settings) in enumerate(zip(spec.stages, per_stage)):
        sd: Dict[str, Any] = {}
        ms = [call_data(m) for m in st.mixers]
        sd["mixer"] = ms[0] if len(ms) == 1 else ms
        sd["depth"] = st.depth
        sd["width"] = st.width
        for key, v in settings.items():
            if key not in shared and v != ref[key]:
                _put(sd, key, v)
        if i > 0 and not ds_shared and st.downsample != default_downsample():
            sd["downsample"] = (None if st.downsample is None
                                else downsample_data(st.downsample, default_downsample()))
        stages.append(sd)
    d["stages"] = stages

    if spec.output_norm != base.output_norm:
        d["output_norm"] = call_data(spec.output_norm)
    if spec.head != base.head:
        d["head"] = call_data(spec.head)
    if spec.dense is not None:
        dd: Dict[str, Any] = {"outputs": list(spec.dense.outputs)}
        if spec.dense.norm != default_dense_norm():
            dd["norm"] = call_data(spec.dense.norm)
        dd.update({f"stage{i}": call_data(c) for i, c in sorted(spec.dense.norms.items())})
        d["dense"] = dd
    ev = _changed(spec.eval, EvalSpec())
    if ev:
        d["eval"] = ev
    lim = _changed(spec.limits, LimitsSpec())
    if lim:
        d["limits"] = lim
    if spec.recipe is not None:
        d["train"] = _changed(spec.recipe, RecipeSpec())
    return d


def _changed(node: Any, base: Any) -> Dict[str, Any]:
    """The settings of ``node`` that differ from ``base``, by their YAML key."""
    return {meta.key or name: setting_data(getattr(node, name))
            for name, meta, _ in settings_of(type(node))
            if getattr(node, name) != getattr(base, name)}


# --- data -> text ----------------------------------------------------------------------

def _block(d: Dict[str, Any], indent: int, out: List[str]) -> None:
    pad = " " * indent
    for k, v in d.items():
        if k == "stages":
            out.append(f"{pad}stages:")
            for st in v:
                line = f"{pad}  - {flow(st)}"
                if len(line) <= LINE_WIDTH:
                    out.append(line)
                    continue
                first = True
                for sk, sv in st.items():
                    lead = f"{pad}  - " if first else f"{pad}    "
                    out.append(f"{lead}{sk}: {flow(sv)}")
                    first = False
            continue
        one = f"{pad}{scalar(k)}: {flow(v)}"
        block = k in ("defaults", "train", "choices", "require") or len(one) > LINE_WIDTH
        if not isinstance(v, dict) or not v or not block:
            out.append(one)
        else:
            out.append(f"{pad}{scalar(k)}:")
            _block(v, indent + 2, out)


def to_yaml(spec: ModelSpec, schema_ref: str = "../grammar/metaformer.schema.json") -> str:
    """Canonical YAML text of ``spec``: only the settings that differ from the defaults."""
    return yaml_text(spec_data(spec), schema_ref)


def yaml_text(data: Dict[str, Any], schema_ref: str) -> str:
    """A document's data as canonical YAML text, headed by its schema reference."""
    out = [f"# yaml-language-server: $schema={schema_ref}"]
    _block(data, 0, out)
    return "\n".join(out) + "\n"


# --- the JSON Schema (generated in mfdsl.schema; kept importable from here) ---------------

from ..schema import build_schema, main, schema_text  # noqa: E402,F401 - re-exported

if __name__ == "__main__":
    sys.exit(main())

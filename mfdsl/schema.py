"""The JSON Schema of the ``.yaml`` spec format, generated from the IR's field metadata
(:func:`mfdsl.ir.setting`) and the registry's component parameters.

``python -m mfdsl.schema --write-schema`` (or ``python -m mfdsl.emit.yaml``) regenerates
``grammar/metaformer.schema.json`` and ``grammar/metaformer-space.schema.json`` (the same
format where a value may be a choice: docs/spaces.md); a test checks the committed files
are up to date. Every range here is the one the semantic checks enforce: both read the
same metadata.
"""
from __future__ import annotations

import copy
import json
import sys
from typing import Any, Dict, List, Optional

from . import layers  # noqa: F401 - registers the built-in components the schema lists
from .fields import BOOL, COUNT, FLOAT, FLOATS, INT, SIZE, STR, Field
from .ir import (BUDGET_METRICS, COUNT_PATTERN, Call, DenseSpec, DownsampleSpec, EvalSpec,
                 LimitsSpec, ModelSpec,
                 RecipeSpec, Setting, StageSpec, arg_data, call, call_data, default_downsample,
                 default_stem, setting_data, setting_of, settings_of)
from .registry import KINDS, Param, registry

SCHEMA_FILE = "metaformer.schema.json"
SCHEMA_ID = "urn:mfdsl:schema:metaformer-spec:1"
SPACE_SCHEMA_FILE = "metaformer-space.schema.json"
SPACE_SCHEMA_ID = "urn:mfdsl:schema:metaformer-space:1"
_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
_KIND_EXAMPLE = {"mixer": "sepconv", "activation": "starrelu", "norm": "layernorm",
                 "head": "linear"}


def _prop(title: str, description: str, schema: Dict[str, Any], default: Any = None,
          examples: Optional[List[Any]] = None, *, has_default: bool = True) -> Dict[str, Any]:
    out = {"title": title, "description": description}
    out.update(schema)
    if has_default:
        out["default"] = default
    out["examples"] = examples if examples is not None else (
        [default] if has_default and default is not None else [])
    return out


def _bounds(out: Dict[str, Any], lo: Any, hi: Any, lo_ex: bool, hi_ex: bool) -> None:
    if lo is not None:
        out["exclusiveMinimum" if lo_ex else "minimum"] = lo
    if hi is not None:
        out["exclusiveMaximum" if hi_ex else "maximum"] = hi


def value_schema(meta: Field, none_word: bool = True) -> Dict[str, Any]:
    """The JSON Schema of one value (a setting's or a component argument's), from its
    :class:`~mfdsl.fields.Field`. ``none_word``: an optional value may also be written as
    the word ``none`` (settings), not only as null (component arguments are literal)."""
    t = meta.type
    if meta.is_component:
        s: Dict[str, Any] = {"$ref": f"#/$defs/{t}"}
    elif t in (INT, FLOAT, BOOL, STR):
        s = {"type": _JSON_TYPE[t]}
        if t in (INT, FLOAT):
            _bounds(s, meta.min, meta.max, meta.min_exclusive, meta.max_exclusive)
        if meta.choices:
            s["enum"] = list(meta.choices)
    elif t == COUNT:
        one = {"type": "integer"}
        _bounds(one, meta.min, meta.max, meta.min_exclusive, meta.max_exclusive)
        s = {"anyOf": [one, {"type": "string", "pattern": COUNT_PATTERN}]}
    elif t == FLOATS:
        item: Dict[str, Any] = {"type": "number"}
        _bounds(item, meta.item_min, meta.item_max, meta.item_min_exclusive,
                meta.item_max_exclusive)
        s = {"type": "array", "items": item, "minItems": meta.length or 1}
        if meta.length:
            s["maxItems"] = meta.length
    elif t == SIZE:
        one = {"type": "integer"}
        _bounds(one, meta.min, meta.max, meta.min_exclusive, meta.max_exclusive)
        s = {"anyOf": [one, {"type": "array", "items": one, "minItems": 2, "maxItems": 2}]}
    else:  # pragma: no cover - Field refuses any other type
        raise ValueError(f"no schema for value type {t!r}")
    if meta.optional:
        if "enum" in s:
            s["enum"].append(None)
        if t == STR or (not none_word and "type" in s):
            # The word none is a string anyway; bounds only apply to numbers.
            s = {"type": [s["type"], "null"], **{k: v for k, v in s.items() if k != "type"}}
        elif none_word:
            s = {"anyOf": [s, {"type": "null"}, {"const": "none"}]}
        else:
            s = {"anyOf": [s, {"type": "null"}]}
    return s


_JSON_TYPE = {INT: "integer", FLOAT: "number", BOOL: "boolean", STR: "string"}


def setting_schema(name: str, meta: Setting, default: Any) -> Dict[str, Any]:
    examples = [setting_data(call(e) if meta.is_component and isinstance(e, str) else e)
                for e in meta.examples] if meta.examples else None
    return _prop(meta.key or name, meta.doc, value_schema(meta), setting_data(default),
                 examples)


def _props(cls: type, base: Any, names: Optional[List[str]] = None) -> Dict[str, Any]:
    """Properties of the settings of ``cls`` (defaults from ``base``), groups nested."""
    out: Dict[str, Any] = {}
    for name, meta, _ in settings_of(cls):
        if names is not None and name not in names:
            continue
        prop = setting_schema(name, meta, getattr(base, name))
        if meta.group:
            grp = out.setdefault(meta.group, {
                "title": meta.group, "description": f"The block {meta.group.upper()}: "
                "Linear -> act -> Linear.", "type": "object", "additionalProperties": False,
                "properties": {}, "default": {}, "examples": []})
            grp["properties"][meta.key or name] = prop
            grp["examples"] = [{k: p["default"] for k, p in grp["properties"].items()}]
        else:
            out[meta.key or name] = prop
    return out


# --- components ----------------------------------------------------------------------------

def _param_schema(p: Param) -> Dict[str, Any]:
    """A component argument's property: its value schema as a setting's, its default."""
    default = call_data(p.default, nested=True) if isinstance(p.default, Call) else p.default
    doc = p.doc or p.name.replace("_", " ")
    shown = json.dumps(default) if not isinstance(default, str) else default
    return _prop(p.name, f"{doc} ({p.type_name}; default {_flow(default) or shown})",
                 value_schema(p.field, none_word=False), default)


def _flow(v: Any) -> str:
    """YAML flow text of a default (for descriptions)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        text = repr(v)
        if "e" in text and "." not in text.split("e")[0]:
            m, e = text.split("e")
            text = f"{m}.0e{e}"
        return text
    return str(v)


def _component_defs() -> Dict[str, Any]:
    """A reference schema per component kind, listing the built-in components' arguments.

    Names outside the list are allowed (plugins); the semantic checks report unknown ones.
    """
    defs: Dict[str, Any] = {
        "args": {
            "title": "arguments",
            "description": "Keyword arguments of a component registered from Python.",
            "type": ["object", "null"],
        },
    }
    for kind in KINDS:
        builtin = registry.builtin_names(kind)
        props = {}
        for name in builtin:
            comp = registry.get(kind, name)
            props[name] = {
                "title": name,
                "description": f"{comp.doc}." if comp.doc else name,
                "type": ["object", "null"],
                "properties": {p.name: _param_schema(p) for p in comp.params},
                "additionalProperties": False,
                "default": {},
                "examples": [{p.name: arg_data(p.default) for p in comp.params[:1]}],
            }
        example = _KIND_EXAMPLE[kind]
        defs[kind] = {
            "title": kind,
            "description": (f"A {kind}: its name, or a one-key mapping {{name: {{arg: value}}}}"
                            f". Built in: {', '.join(builtin)}; plugins may add more."),
            "x-expected": f"a {kind}: a name like '{example}' or a one-key mapping "
                          "{name: {arg: value}}",
            "anyOf": [
                {"type": "string", "pattern": _NAME_PATTERN, "examples": builtin},
                {"type": "object", "minProperties": 1, "maxProperties": 1,
                 "propertyNames": {"pattern": _NAME_PATTERN},
                 "properties": props,
                 "additionalProperties": {"$ref": "#/$defs/args"}},
            ],
        }
    return defs


# --- the document --------------------------------------------------------------------------

def _downsample_def(base: DownsampleSpec, what: str) -> Dict[str, Any]:
    return {
        "title": what,
        "description": f"The strided Conv2d of the {what}, with optional norms around it. "
                       "Omitted fields keep their defaults.",
        "type": "object",
        "additionalProperties": False,
        "properties": _props(DownsampleSpec, base),
    }


def _stage_props(for_defaults: bool) -> Dict[str, Any]:
    st = StageSpec()
    where = "every stage (a stage's own setting wins)" if for_defaults else "this stage"
    mixer_list = {"anyOf": [{"$ref": "#/$defs/mixer"},
                            {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/mixer"}}]}
    props: Dict[str, Any] = {
        "mixer": _prop("mixer", f"Token mixer of {where}; a list is cycled over the blocks "
                       "(block j uses mixer j mod n).", mixer_list, "identity",
                       ["pooling", "sepconv", ["sepconv", {"attention": {"head_dim": 32}}]]),
    }
    if not for_defaults:
        for name in ("depth", "width"):
            meta = next(m for n, m, _ in settings_of(StageSpec) if n == name)
            props[name] = _prop(name, meta.doc, value_schema(meta), None,
                                {"depth": [2, 3, 6], "width": [64, 128, 320, 512]}[name],
                                has_default=False)
    settings = [n for n, _, _ in settings_of(StageSpec) if n not in ("depth", "width")]
    props.update(_props(StageSpec, st, settings))
    props["downsample"] = _prop(
        "downsample", "The downsampling before " + (
            "each stage after the first" if for_defaults else "this stage (not stage 0: the "
            "stem does that)") + "; null or none keeps the resolution.",
        {"anyOf": [{"$ref": "#/$defs/downsample"}, {"type": "null"}, {"const": "none"}]},
        {}, [{"kernel": 3, "stride": 2, "padding": 1}, None])
    return props


def _block_def(title: str, description: str, cls: type, base: Any,
               nullable: bool = False) -> Dict[str, Any]:
    props = _props(cls, base)
    first = next(iter(props.values()))
    example = first["examples"][-1] if first["examples"] else first["default"]
    return {"title": title, "description": description,
            "type": ["object", "null"] if nullable else "object",
            "additionalProperties": False, **({} if nullable else {"default": {}}),
            "examples": [{next(iter(props)): example}], "properties": props}


def build_schema() -> Dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the ``.yaml`` spec format."""
    base = ModelSpec()
    model = {n: m for n, m, _ in settings_of(ModelSpec)}
    defs = _component_defs()
    defs["downsample"] = _downsample_def(default_downsample(), "downsampling between stages")
    defs["stem"] = _downsample_def(default_stem(), "stem")
    defs["stage"] = {
        "title": "stage", "description": "One stage: depth blocks of the given width.",
        "type": "object", "additionalProperties": False, "required": ["depth", "width"],
        "properties": _stage_props(False),
    }
    defs["recipe"] = _block_def("train", "The training recipe; omitted fields keep the "
                                "paper's shared ImageNet-1K settings.",
                                RecipeSpec, RecipeSpec(), nullable=True)
    props = {
        "model": _prop("model", model["name"].doc, {"type": "string"}, None,
                       ["caformer_s18", "randformer_s12"], has_default=False),
        "input": {
            "title": "input", "description": "The input image.", "type": "object",
            "additionalProperties": False, "default": {},
            "examples": [{"channels": 3, "size": 224}],
            "properties": {
                "channels": _prop("channels", model["in_chans"].doc,
                                  value_schema(model["in_chans"]), base.in_chans),
                "size": _prop("size", "Input size: one integer (square) or [height, width].",
                              value_schema(model["img_size"]), base.img_size[0],
                              [224, 384, [224, 288]]),
            },
        },
        "classes": _prop("classes", model["num_classes"].doc,
                         value_schema(model["num_classes"]), base.num_classes, [1000, 21841]),
        "stem": {"$ref": "#/$defs/stem"},
        "defaults": {
            "title": "defaults", "description": "Settings shared by every stage; a stage's "
            "own setting wins.", "type": "object", "additionalProperties": False,
            "default": {}, "examples": [{"norm": {"layernorm": {"bias": False, "eps": 1e-6}}}],
            "properties": _stage_props(True),
        },
        "stages": {
            "title": "stages", "description": "The stages, first (highest resolution) first.",
            "type": "array", "minItems": 1, "items": {"$ref": "#/$defs/stage"},
            "examples": [[{"mixer": "pooling", "depth": 2, "width": 64}]],
        },
        **_props(ModelSpec, base, ["output_norm", "head"]),
        "dense": {
            "title": "dense", "description": DenseSpec.__doc__.split("\n\n")[0].strip()
            .replace("\n", " ").replace("    ", " "),
            "type": "object", "additionalProperties": False, "required": ["outputs"],
            "examples": [{"outputs": [0, 1, 2, 3], "stage0": "identity"}],
            "properties": {
                "outputs": {"title": "outputs", "description": "Indices of the stages whose "
                            "outputs the backbone yields, increasing.", "type": "array",
                            "minItems": 1, "items": {"type": "integer", "minimum": 0},
                            "examples": [[0, 1, 2, 3], [1, 2, 3]]},
                **_props(DenseSpec, DenseSpec(), ["norm"]),
            },
            "patternProperties": {"^stage[0-9]+$": value_schema(setting_of(DenseSpec, "norm"))},
        },
        "eval": _block_def("eval", "The default evaluation transform.", EvalSpec, EvalSpec()),
        "limits": _block_def("limits", "Size limits, checked after the semantic checks and "
                             "before any real tensor is allocated.", LimitsSpec, LimitsSpec()),
        "train": {"$ref": "#/$defs/recipe"},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "mfdsl MetaFormer spec",
        "description": "A MetaFormer vision model (and optionally its training recipe) for "
                       "mfdsl. Generated by `python -m mfdsl.schema --write-schema`.",
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "stages"],
        "properties": props,
        "$defs": defs,
    }


# --- design spaces -------------------------------------------------------------------------

# Keys whose value is a block of settings, not one value: a choice goes inside them.
_BLOCK_KEYS = ("model", "input", "defaults", "stages", "eval", "limits", "train", "stem",
               "downsample")
_REF_PATTERN = "^\\$[A-Za-z_][A-Za-z0-9_]*$"


def _takes_integer(p: Dict[str, Any]) -> bool:
    return p.get("type") == "integer" or any(_takes_integer(b) for b in p.get("anyOf", []))


def _choosable(p: Dict[str, Any]) -> Dict[str, Any]:
    """``p``, or a choice among values of ``p``, an integer range where ``p`` takes
    integers, or a ``$name``."""
    inner = {k: v for k, v in p.items() if k not in ("title", "description")}
    alts = [inner, {"$ref": "#/$defs/reference"},
            {"type": "object", "additionalProperties": False, "required": ["choice"],
             "properties": {"choice": {"type": "array", "minItems": 1, "items": inner}}}]
    if _takes_integer(p):
        alts.append({"$ref": "#/$defs/range"})
    return {k: p[k] for k in ("title", "description") if k in p} | {"anyOf": alts}


def _choosable_properties(node: Dict[str, Any]) -> None:
    """Let every setting inside ``node`` (an object schema) be a choice, in place."""
    for key, p in node.get("properties", {}).items():
        if "properties" in p:  # a block or a group (mlp): its settings may be choices
            _choosable_properties(p)
        elif key not in _BLOCK_KEYS:
            node["properties"][key] = _choosable(p)


def _count_schema() -> Dict[str, Any]:
    return {"anyOf": [{"type": "integer", "minimum": 0},
                      {"type": "string", "pattern": COUNT_PATTERN}]}


def build_space_schema() -> Dict[str, Any]:
    """The JSON Schema of a ``.yaml`` design space: the spec format where each setting,
    mixer, depth and width may be ``{choice: [...]}``, ``{range: [lo, hi]}`` (integers)
    or ``$name``, plus ``choices:`` and ``require:`` (docs/spaces.md)."""
    s = copy.deepcopy(build_schema())
    s["$id"] = SPACE_SCHEMA_ID
    s["title"] = "mfdsl MetaFormer design space"
    s["description"] = ("A design space of MetaFormer vision models for mfdsl: a spec whose "
                        "values may be choices. Generated by `python -m mfdsl.schema "
                        "--write-schema`.")
    defs = s["$defs"]
    _choosable_properties(s)
    for name in ("stage", "recipe", "stem", "downsample"):
        _choosable_properties(defs[name])
    _choosable_properties(s["properties"]["defaults"])
    defs["reference"] = {
        "title": "$name", "description": "The value a named choice (under `choices:`) "
        "took: every place that writes it takes the same alternative.",
        "type": "string", "pattern": _REF_PATTERN}
    defs["range"] = {
        "title": "range", "description": "The integers lo, lo+1, ..., hi.",
        "type": "object", "additionalProperties": False, "required": ["range"],
        "properties": {"range": {"type": "array", "minItems": 2, "maxItems": 2,
                                 "items": {"type": "integer", "minimum": 0}}}}
    window = {"min": _prop("min", "The lowest value allowed (a count like 3.8G).",
                           _count_schema(), has_default=False),
              "max": _prop("max", "The highest value allowed (a count like 30M).",
                           _count_schema(), has_default=False)}
    budgets: Dict[str, Any] = {}
    for metric in BUDGET_METRICS:
        props = dict(window)
        b: Dict[str, Any] = {"type": "object", "additionalProperties": False,
                             "minProperties": 1, "properties": props}
        if metric == "train_memory":
            props["batch"] = _prop("batch", "The batch the training memory is for.",
                                   {"type": "integer", "minimum": 1}, has_default=False)
            b["required"] = ["batch"]
        budgets[metric] = {"title": metric, "description": {
            "params": "Parameters.", "macs": "MACs per image.",
            "train_memory": "fp32 activations kept for the backward pass of `batch` images "
                            "+ 16 bytes per parameter."}[metric], **b}
    s["properties"]["choices"] = {
        "title": "choices", "description": "Named choices, used as $name where a value "
        "stands.", "type": "object", "propertyNames": {"pattern": _NAME_PATTERN},
        "additionalProperties": {"anyOf": [
            {"type": "object", "additionalProperties": False, "required": ["choice"],
             "properties": {"choice": {"type": "array", "minItems": 1}}},
            {"$ref": "#/$defs/range"}]}}
    s["properties"]["require"] = {
        "title": "require", "description": "Budgets, measured on the meta device: a "
        "candidate outside them is rejected when sampling.", "type": "object",
        "additionalProperties": False, "minProperties": 1, "properties": budgets}
    return s


def schema_text(space: bool = False) -> str:
    return json.dumps(build_space_schema() if space else build_schema(), indent=2) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """``--write-schema [PATH]``: write the schema (default: both schemas in grammar/);
    ``--check``: compare."""
    from .resources import grammar_file

    args = list(sys.argv[1:] if argv is None else argv)
    targets = {False: grammar_file(SCHEMA_FILE), True: grammar_file(SPACE_SCHEMA_FILE)}
    if args[:1] == ["--write-schema"]:
        from .fsio import write_atomic

        if len(args) > 1:
            write_atomic(args[1], schema_text())
            print(f"wrote {args[1]}")
            return 0
        for space, target in targets.items():
            write_atomic(str(target), schema_text(space))
            print(f"wrote {target}")
        return 0
    if args[:1] == ["--check"]:
        for space, target in targets.items():
            current = target.read_text(encoding="utf-8") if target.exists() else ""
            if current != schema_text(space):
                print(f"{target} is out of date; run python -m mfdsl.schema --write-schema")
                return 1
        return 0
    print("usage: python -m mfdsl.schema --write-schema [PATH] | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

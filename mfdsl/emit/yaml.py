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
from dataclasses import fields
from typing import Any, Dict, List, Optional

from ..frontend.yaml_spec import (
    COUNT_PATTERN, DOWNSAMPLE_KEYS, LIMIT_KEYS, RECIPE_KEYS, SCHEMA_FILE,
)
from ..ir import (
    Call, DownsampleSpec, EvalSpec, LimitsSpec, ModelSpec, RecipeSpec, StageSpec,
    default_downsample, default_stem,
)

SCHEMA_COMMENT = "# yaml-language-server: $schema=../grammar/metaformer.schema.json"
SCHEMA_ID = "urn:mfdsl:schema:metaformer-spec:1"
LINE_WIDTH = 96
# Sanity bound: the paper's deepest stage has 24 blocks; a typo like 2000000 must not make
# the size check build millions of (meta) blocks.
MAX_DEPTH = 1000
MAX_WIDTH = 1 << 20  # channels
MAX_SIZE = 1 << 16  # pixels of the input side, conv kernels and strides
MAX_CLASSES = 1 << 24

# --- scalars ---------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
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

def call_data(c: Call, *, nested: bool = False) -> Any:
    """``Call`` -> ``name`` or ``{name: {args}}`` (a nested Call always as a mapping)."""
    if not c.args and not nested:
        return c.name
    return {c.name: {k: arg_data(v) for k, v in c.args.items()}}


def arg_data(v: Any) -> Any:
    if isinstance(v, Call):
        return call_data(v, nested=True)
    if isinstance(v, (list, tuple)):
        return [arg_data(x) for x in v]
    return v


def _opt_call(c: Optional[Call]) -> Any:
    return None if c is None else call_data(c)


def downsample_data(ds: DownsampleSpec, base: DownsampleSpec) -> Dict[str, Any]:
    """The fields of ``ds`` that differ from ``base``."""
    out: Dict[str, Any] = {}
    for k in DOWNSAMPLE_KEYS:
        v = getattr(ds, k)
        if v != getattr(base, k):
            out[k] = _opt_call(v) if k.endswith("_norm") else v
    return out


def _stage_settings(st: StageSpec) -> Dict[str, Any]:
    """Stage settings other than mixer/depth/width/downsample, as YAML data."""
    return {
        "norm": call_data(st.norm),
        ("mlp", "ratio"): st.mlp_ratio,
        ("mlp", "act"): call_data(st.mlp_act),
        ("mlp", "bias"): st.mlp_bias,
        "layer_scale": st.layer_scale,
        "res_scale": st.res_scale,
    }


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
    ev = {k: list(v) if isinstance(v, tuple) else v
          for k, v in _changed(spec.eval, EvalSpec()).items()}
    if ev:
        d["eval"] = ev
    lim_names = {v: k for k, v in LIMIT_KEYS.items()}
    lim = {lim_names[k]: v for k, v in _changed(spec.limits, LimitsSpec()).items()}
    if lim:
        d["limits"] = lim
    if spec.recipe is not None:
        d["train"] = {k: list(v) if isinstance(v, tuple) else v
                      for k, v in _changed(spec.recipe, RecipeSpec()).items()}
    return d


def _changed(node: Any, base: Any) -> Dict[str, Any]:
    return {f.name: getattr(node, f.name) for f in fields(node)
            if f.compare and f.name != "locs" and getattr(node, f.name) != getattr(base, f.name)}


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
        block = k in ("defaults", "train") or len(one) > LINE_WIDTH
        if not isinstance(v, dict) or not v or not block:
            out.append(one)
        else:
            out.append(f"{pad}{scalar(k)}:")
            _block(v, indent + 2, out)


def to_yaml(spec: ModelSpec, schema_ref: str = "../grammar/metaformer.schema.json") -> str:
    """Canonical YAML text of ``spec``: only the settings that differ from the defaults."""
    out = [f"# yaml-language-server: $schema={schema_ref}"]
    _block(spec_data(spec), 0, out)
    return "\n".join(out) + "\n"


# --- the JSON Schema -------------------------------------------------------------------

def _prop(title: str, description: str, schema: Dict[str, Any], default: Any = None,
          examples: Optional[List[Any]] = None, *, has_default: bool = True) -> Dict[str, Any]:
    out = {"title": title, "description": description}
    out.update(schema)
    if has_default:
        out["default"] = default
    out["examples"] = examples if examples is not None else (
        [default] if has_default and default is not None else [])
    return out


_KIND_EXAMPLE = {"mixer": "sepconv", "activation": "starrelu", "norm": "layernorm",
                 "head": "linear"}


def _param_schema(p: Any) -> Dict[str, Any]:
    from ..ir import Call as _Call

    if isinstance(p.type, str):
        s: Dict[str, Any] = {"$ref": f"#/$defs/{p.type}"}
        if p.default is None:
            s = {"anyOf": [s, {"type": "null"}]}
    else:
        t = {int: "integer", float: "number", bool: "boolean", str: "string"}[p.type]
        s = {"type": [t, "null"] if p.default is None else t}
        if p.choices:
            s["enum"] = list(p.choices)
        if p.min is not None:
            s["exclusiveMinimum" if p.min_exclusive else "minimum"] = p.min
        if p.max is not None:
            s["maximum"] = p.max
    default = call_data(p.default, nested=True) if isinstance(p.default, _Call) else p.default
    doc = p.doc or p.name.replace("_", " ")
    return _prop(p.name, f"{doc} ({p.type_name}; default {flow(default)})", s, default)


def _component_defs() -> Dict[str, Any]:
    """A reference schema per component kind, listing the built-in components' arguments.

    Names outside the list are allowed (plugins); the semantic checks report unknown ones.
    """
    from ..registry import KINDS, registry

    defs: Dict[str, Any] = {
        "args": {
            "title": "arguments",
            "description": "Keyword arguments of a component registered from Python.",
            "type": ["object", "null"],
        },
    }
    for kind in KINDS:
        builtin = [n for n in registry.names(kind)
                   if registry.get(kind, n).factory.__module__.startswith("mfdsl.layers")]
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
                {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                 "examples": builtin},
                {"type": "object", "minProperties": 1, "maxProperties": 1,
                 "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                 "properties": props,
                 "additionalProperties": {"$ref": "#/$defs/args"}},
            ],
        }
    return defs


def _opt_ref(kind: str) -> Dict[str, Any]:
    return {"anyOf": [{"$ref": f"#/$defs/{kind}"}, {"type": "null"}, {"const": "none"}]}


def _downsample_def(base: DownsampleSpec, what: str) -> Dict[str, Any]:
    nd = lambda c: None if c is None else call_data(c)  # noqa: E731
    return {
        "title": what,
        "description": f"The strided Conv2d of the {what}, with optional norms around it. "
                       "Omitted fields keep their defaults.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "kernel": _prop("kernel", "Conv kernel size.",
                            {"type": "integer", "minimum": 1, "maximum": MAX_SIZE},
                            base.kernel),
            "stride": _prop("stride", "Conv stride (the downsampling factor).",
                            {"type": "integer", "minimum": 1, "maximum": MAX_SIZE}, base.stride),
            "padding": _prop("padding", "Zero padding on each side.",
                             {"type": "integer", "minimum": 0}, base.padding),
            "bias": _prop("bias", "Conv bias.", {"type": "boolean"}, base.bias),
            "pre_norm": _prop("pre_norm", "Norm before the conv (null: none).",
                              _opt_ref("norm"), nd(base.pre_norm), [nd(base.pre_norm)]),
            "post_norm": _prop("post_norm", "Norm after the conv (null: none).",
                               _opt_ref("norm"), nd(base.post_norm), [nd(base.post_norm)]),
        },
    }


def _stage_props(st: StageSpec, for_defaults: bool) -> Dict[str, Any]:
    scale = {"anyOf": [{"type": "number"}, {"type": "null"}, {"const": "none"}]}
    mixer_list = {"anyOf": [{"$ref": "#/$defs/mixer"},
                            {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/mixer"}}]}
    where = "every stage (a stage's own setting wins)" if for_defaults else "this stage"
    props = {
        "mixer": _prop("mixer", f"Token mixer of {where}; a list is cycled over the blocks "
                       "(block j uses mixer j mod n).", mixer_list, "identity",
                       ["pooling", "sepconv", ["sepconv", {"attention": {"head_dim": 32}}]]),
        "norm": _prop("norm", f"Norm before the mixer and the MLP in {where}.",
                      {"$ref": "#/$defs/norm"}, call_data(st.norm),
                      [call_data(st.norm), {"modified_layernorm": {"eps": 1e-6}}]),
        "mlp": {
            "title": "mlp",
            "description": f"The channel MLP of {where}: Linear -> act -> Linear.",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ratio": _prop("ratio", "Hidden width / width.",
                               {"type": "number", "exclusiveMinimum": 0, "maximum": 64},
                               st.mlp_ratio),
                "act": _prop("act", "Activation between the two Linear layers.",
                             {"$ref": "#/$defs/activation"}, call_data(st.mlp_act),
                             ["starrelu", "gelu", "squared_relu"]),
                "bias": _prop("bias", "Bias in both Linear layers.", {"type": "boolean"},
                              st.mlp_bias),
            },
            "default": {}, "examples": [{"ratio": 4, "act": "starrelu", "bias": False}],
        },
        "layer_scale": _prop("layer_scale", "Initial value of a learnable per-channel scale "
                             "on each residual branch (null: none).", scale, None, [1.0e-6]),
        "res_scale": _prop("res_scale", "Initial value of a learnable per-channel scale on "
                           "the residual path (null: none). The baselines use 1.0 in stages "
                           "2 and 3.", scale, None, [1.0]),
        "downsample": _prop("downsample", "The downsampling before " + (
            "each stage after the first" if for_defaults else "this stage (not stage 0: the "
            "stem does that)") + "; null or none keeps the resolution.",
            {"anyOf": [{"$ref": "#/$defs/downsample"}, {"type": "null"}, {"const": "none"}]},
            {}, [{"kernel": 3, "stride": 2, "padding": 1}, None]),
    }
    if not for_defaults:
        props = {
            "mixer": props.pop("mixer"),
            "depth": _prop("depth", f"Number of blocks (at most {MAX_DEPTH}).",
                           {"type": "integer", "minimum": 1, "maximum": MAX_DEPTH},
                           None, [2, 3, 6], has_default=False),
            "width": _prop("width", f"Channels of the stage (at most {MAX_WIDTH}).",
                           {"type": "integer", "minimum": 1, "maximum": MAX_WIDTH},
                           None, [64, 128, 320, 512], has_default=False),
            **props,
        }
    return props


_RECIPE_DOCS = {
    "epochs": "Training epochs.",
    "batch_size": "Global batch size.",
    "optimizer": "Optimizer.",
    "lr": "Peak learning rate, stated for lr_batch (scaled linearly to batch_size).",
    "lr_batch": "The batch size lr is stated for.",
    "weight_decay": "Decoupled weight decay.",
    "opt_eps": "Optimizer epsilon.",
    "betas": "Adam/LAMB betas.",
    "momentum": "SGD momentum (sgd only).",
    "sched": "Learning-rate schedule.",
    "warmup_epochs": "Linear warmup epochs.",
    "warmup_lr": "Learning rate at the start of warmup.",
    "min_lr": "Final learning rate of the cosine schedule.",
    "drop_path": "Stochastic depth rate, growing linearly over the blocks to this value.",
    "head_dropout": "Dropout before the classifier's last Linear.",
    "label_smoothing": "Label smoothing.",
    "mixup": "Mixup alpha (0: off).",
    "cutmix": "CutMix alpha (0: off).",
    "mixup_switch_prob": "Probability of CutMix instead of Mixup when both are on.",
    "randaugment": "RandAugment config string (null: off).",
    "random_erasing": "Random erasing probability.",
    "train_interpolation": "Resize interpolation for training crops.",
    "amp": "Automatic mixed precision.",
    "ema": "Model EMA decay (null: no EMA).",
    "clip_grad": "Gradient norm clipping (null: off).",
    "finetune_from": "The checkpoint or spec this recipe fine-tunes (null: from scratch).",
}


def _recipe_def() -> Dict[str, Any]:
    from ..checks import INTERPOLATIONS, OPTIMIZERS, SCHEDULES

    r = RecipeSpec()
    enums = {"optimizer": OPTIMIZERS, "sched": SCHEDULES, "train_interpolation": INTERPOLATIONS}
    examples = {"optimizer": ["adamw", "lamb"], "lr": [4e-3, 8e-3], "drop_path": [0.1, 0.15],
                "warmup_epochs": [5, 20], "head_dropout": [0.0, 0.4], "ema": [0.9999],
                "clip_grad": [5.0], "finetune_from": ["caformer_s18"]}
    props = {}
    for k in RECIPE_KEYS:
        v = getattr(r, k)
        if k in enums:
            s: Dict[str, Any] = {"type": "string", "enum": list(enums[k])}
        elif k == "betas":
            s = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
            v = list(v)
        elif k in ("randaugment", "finetune_from"):
            s = {"type": ["string", "null"]}
        elif k in ("ema", "clip_grad"):
            s = {"type": ["number", "null"]}
        elif isinstance(v, bool):
            s = {"type": "boolean"}
        elif isinstance(v, int):
            s = {"type": "integer", "minimum": 0 if k == "warmup_epochs" else 1}
        else:
            s = {"type": "number", "minimum": 0}
        props[k] = _prop(k, _RECIPE_DOCS[k], s, v, examples.get(k))
    return {"title": "train", "description": "The training recipe; omitted fields keep the "
            "paper's shared settings (facts sheet section 3).", "type": ["object", "null"],
            "additionalProperties": False, "properties": props}


def build_schema() -> Dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the ``.yaml`` spec format."""
    base = ModelSpec()
    ev = EvalSpec()
    lim = LimitsSpec()
    count = {"anyOf": [{"type": "integer", "minimum": 1},
                       {"type": "string", "pattern": COUNT_PATTERN}]}
    defs = _component_defs()
    defs["downsample"] = _downsample_def(default_downsample(), "downsampling between stages")
    defs["stem"] = _downsample_def(default_stem(), "stem")
    defs["stage"] = {
        "title": "stage", "description": "One stage: depth blocks of the given width.",
        "type": "object", "additionalProperties": False, "required": ["depth", "width"],
        "properties": _stage_props(StageSpec(), False),
    }
    defs["recipe"] = _recipe_def()
    one = {"type": "integer", "minimum": 1, "maximum": MAX_SIZE}
    size = {"anyOf": [one, {"type": "array", "items": one,
                       "minItems": 2, "maxItems": 2}]}
    props = {
        "model": _prop("model", "The model's name (e.g. caformer_s18).", {"type": "string"},
                       None, ["caformer_s18", "randformer_s12"], has_default=False),
        "input": {
            "title": "input", "description": "The input image.", "type": "object",
            "additionalProperties": False, "default": {},
            "examples": [{"channels": 3, "size": 224}],
            "properties": {
                "channels": _prop("channels", "Input channels.",
                                  {"type": "integer", "minimum": 1, "maximum": MAX_WIDTH},
                                  base.in_chans),
                "size": _prop("size", "Input size: one integer (square) or [height, width]"
                              f", at most {MAX_SIZE}.",
                              size, base.img_size[0], [224, 384, [224, 288]]),
            },
        },
        "classes": _prop("classes", "Number of classes of the head.",
                         {"type": "integer", "minimum": 1, "maximum": MAX_CLASSES},
                         base.num_classes, [1000, 21841]),
        "stem": {"$ref": "#/$defs/stem"},
        "defaults": {
            "title": "defaults", "description": "Settings shared by every stage; a stage's "
            "own setting wins.", "type": "object", "additionalProperties": False,
            "default": {}, "examples": [{"norm": {"layernorm": {"bias": False, "eps": 1e-6}}}],
            "properties": _stage_props(StageSpec(), True),
        },
        "stages": {
            "title": "stages", "description": "The stages, first (highest resolution) first.",
            "type": "array", "minItems": 1, "items": {"$ref": "#/$defs/stage"},
            "examples": [[{"mixer": "pooling", "depth": 2, "width": 64}]],
        },
        "output_norm": _prop("output_norm", "Norm after global average pooling.",
                             {"$ref": "#/$defs/norm"}, call_data(base.output_norm)),
        "head": _prop("head", "The classifier head.", {"$ref": "#/$defs/head"},
                      call_data(base.head), ["linear", {"mlp": {"ratio": 4}}]),
        "eval": {
            "title": "eval", "description": "The default evaluation transform.",
            "type": "object", "additionalProperties": False, "default": {},
            "examples": [{"crop_pct": 0.95}],
            "properties": {
                "crop_pct": _prop("crop_pct", "Center-crop fraction.",
                                  {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                  ev.crop_pct, [1.0, 0.95]),
                "interpolation": _prop("interpolation", "Resize interpolation.",
                                       {"type": "string",
                                        "enum": ["bilinear", "bicubic", "nearest"]},
                                       ev.interpolation),
                "mean": _prop("mean", "Per-channel mean.", {"type": "array", "minItems": 1,
                              "items": {"type": "number"}}, list(ev.mean)),
                "std": _prop("std", "Per-channel std.", {"type": "array", "minItems": 1,
                             "items": {"type": "number", "exclusiveMinimum": 0}}, list(ev.std)),
            },
        },
        "limits": {
            "title": "limits", "description": "Size limits checked before any tensor is "
            "allocated.", "type": "object", "additionalProperties": False, "default": {},
            "examples": [{"params": "2G"}],
            "properties": {
                "params": _prop("params", "Maximum parameters (integer or e.g. '2G').", count,
                                lim.max_params, ["2G"]),
                "macs": _prop("macs", "Maximum MACs per image (integer or e.g. '2T').", count,
                              lim.max_macs, ["2T"]),
            },
        },
        "train": {"$ref": "#/$defs/recipe"},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "mfdsl MetaFormer spec",
        "description": "A MetaFormer vision model (and optionally its training recipe) for "
                       "mfdsl. Generated by `python -m mfdsl.emit.yaml --write-schema`.",
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "stages"],
        "properties": props,
        "$defs": defs,
    }


def schema_text() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """``--write-schema [PATH]``: write the schema (default: grammar/); ``--check``: compare."""
    from ..resources import grammar_file

    args = list(sys.argv[1:] if argv is None else argv)
    target = grammar_file(SCHEMA_FILE)
    if args[:1] == ["--write-schema"]:
        path = args[1] if len(args) > 1 else str(target)
        from ..fsio import write_atomic

        write_atomic(path, schema_text())
        print(f"wrote {path}")
        return 0
    if args[:1] == ["--check"]:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != schema_text():
            print(f"{target} is out of date; run python -m mfdsl.emit.yaml --write-schema")
            return 1
        return 0
    print("usage: python -m mfdsl.emit.yaml --write-schema [PATH] | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

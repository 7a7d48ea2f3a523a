"""Which model a spec builds, as one hash: a run and its checkpoints carry it, and a spec
given to ``--resume`` or ``eval`` must build the same model.

"Same model" means the same function for the same weights: the architecture (input
channels, classes, stem, every stage's blocks and downsampling, output norm, head), with
each component's arguments resolved against the registry's defaults, so ``pooling`` and
``pooling(pool_size=3)`` are one model. Left out, because they do not change that
function: the name, comments and source locations, the limits, the recipe (training
only; drop path and head dropout are identities at eval) and the context a run records
beside the fingerprint (input size, eval transform).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from .ir import Call, DownsampleSpec, ModelSpec, StageSpec

# Bump when the canonical form below changes meaning.
VERSION = 1
_NESTED_KINDS = ("activation", "norm", "mixer", "head")


def canonical_call(c: Optional[Call], kind: Optional[str] = None) -> Any:
    """A component as plain data, ``{"name", "args"}``, with every argument the registry
    defaults filled in and 2.0 written 2: equal data, same component. ``kind`` (mixer, norm,
    activation, head) names its table; nested components are looked up in each in turn.
    The one canonical component form: the fingerprint hashes it, :func:`call_text` prints it.
    """
    if c is None:
        return None
    from .registry import registry, resolve_args

    comp = None
    for k in ((kind,) if kind else _NESTED_KINDS):
        comp = registry.get(k, c.name)
        if comp is not None:
            break
    args = resolve_args(comp, c.args) if comp is not None else dict(c.args)
    return {"name": c.name, "args": {k: _value(v) for k, v in sorted(args.items())}}


def call_text(c: Optional[Call], kind: Optional[str] = None) -> Optional[str]:
    """The canonical form as one line, for comparing and messages:
    ``mlp(act='squared_relu', bias=True, norm=layernorm(bias=True, eps=1e-05), ratio=4)``."""
    return None if c is None else _text(canonical_call(c, kind))


def _text(v: Any) -> str:
    if isinstance(v, dict):  # a canonical call (plain argument values are never dicts)
        inner = ", ".join(f"{k}={_text(x)}" for k, x in v["args"].items())
        return f"{v['name']}({inner})"
    if isinstance(v, list):
        return "[" + ", ".join(_text(x) for x in v) + "]"
    return repr(v)


def _value(v: Any) -> Any:
    if isinstance(v, Call):
        return canonical_call(v, None)
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)  # 2 and 2.0 are one value
    return v


def _downsample(d: Optional[DownsampleSpec]) -> Any:
    if d is None:
        return None
    return {"kernel": d.kernel, "stride": d.stride, "padding": d.padding, "bias": d.bias,
            "pre_norm": canonical_call(d.pre_norm, "norm"),
            "post_norm": canonical_call(d.post_norm, "norm")}


def _stage(s: StageSpec) -> Any:
    # Block j uses mixers[j % len(mixers)]: the per-block list is what is built.
    return {"depth": s.depth, "width": s.width,
            "mixers": [canonical_call(s.mixer_for_block(j), "mixer") for j in range(s.depth)],
            "mlp_ratio": _value(s.mlp_ratio),
            "mlp_act": canonical_call(s.mlp_act, "activation"),
            "mlp_bias": s.mlp_bias, "norm": canonical_call(s.norm, "norm"),
            "layer_scale": _value(s.layer_scale), "res_scale": _value(s.res_scale),
            "downsample": _downsample(s.downsample)}


def canonical_model(spec: ModelSpec) -> Any:
    """The plain-data form of what ``spec`` builds (what the fingerprint hashes)."""
    return {"version": VERSION, "in_chans": spec.in_chans, "num_classes": spec.num_classes,
            "stem": _downsample(spec.stem), "stages": [_stage(s) for s in spec.stages],
            "output_norm": canonical_call(spec.output_norm, "norm"),
            "head": canonical_call(spec.head, "head")}


def model_fingerprint(spec: ModelSpec) -> str:
    """``sha256:<hex>`` of the canonical model (see the module docstring)."""
    text = json.dumps(canonical_model(spec), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def short(fingerprint: Optional[str]) -> str:
    """The first 12 hex digits, for messages."""
    if not fingerprint:
        return "(none)"
    return fingerprint.split(":", 1)[-1][:12]


def describe_difference(a: ModelSpec, b: ModelSpec, limit: int = 6) -> str:
    """Lines naming where the models ``a`` and ``b`` build differ ("" if they do not)."""
    out: list = []

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            if set(x) == {"name", "args"} == set(y) and x["name"] != y["name"]:
                out.append(f"  {path}: {y['name']} here, {x['name']} in the run")
                return
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        elif x != y:
            out.append(f"  {path}: {_show(y)} here, {_show(x)} in the run")

    walk(canonical_model(a), canonical_model(b), "")
    more = len(out) - limit
    return "\n".join(out[:limit] + ([f"  ... and {more} more"] if more > 0 else []))


def _show(v: Any) -> str:
    if isinstance(v, list):
        return f"{len(v)} entries"
    if isinstance(v, dict) and "name" in v:
        return v["name"]
    return json.dumps(v)

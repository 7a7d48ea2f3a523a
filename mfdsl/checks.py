"""Semantic checks on the IR, run before any real tensor is allocated.

Each problem raises :class:`SpecError` at the location of the offending field, with a
hint where one helps (nearest valid name, allowed range).
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Optional, Tuple

from .errors import Loc, SpecError, nearest
from .ir import Call, DownsampleSpec, ModelSpec, RecipeSpec, StageSpec
from .registry import BuildContext, Param, registry

OPTIMIZERS = ("adamw", "lamb", "sgd")
SCHEDULES = ("cosine", "constant")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "random")


def check(spec: ModelSpec, *, size_limits: bool = True) -> ModelSpec:
    """Raise SpecError for the first problem in ``spec``; return it unchanged if valid."""
    try:
        return _check(spec, size_limits)
    except SpecError as err:
        if err.line is None:
            # A problem with a setting the user did not write (a default that does not
            # fit): point at the model itself rather than at no place at all.
            where = spec.loc("")
            if where is not None:
                err.path, err.line, err.column = where.path, where.line, where.column
            elif spec.source and err.path == "<spec>":
                err.path = spec.source
        raise


_MODEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check(spec: ModelSpec, size_limits: bool) -> ModelSpec:
    if not isinstance(spec.name, str) or not _MODEL_NAME.match(spec.name):
        raise SpecError(f"model name {_show(spec.name)} is not a plain name", spec.loc("name"),
                        hint="letters, digits and _, not starting with a digit, e.g. "
                             "caformer_s18")
    _positive_int(spec, "in_chans", spec.in_chans, "input channels", MAX_WIDTH)
    _positive_int(spec, "num_classes", spec.num_classes, "classes", MAX_CLASSES)
    if len(spec.img_size) != 2 or any(not _is_int(v) or v < 1 for v in spec.img_size):
        raise SpecError(f"input size must be two positive integers, got {spec.img_size}",
                        spec.loc("img_size"))
    if max(spec.img_size) > MAX_SIDE:
        raise SpecError(f"input size {spec.img_size[0]}x{spec.img_size[1]} is out of range",
                        spec.loc("img_size"), hint=f"allowed: sides up to {MAX_SIDE}")
    if not spec.stages:
        raise SpecError("a model needs at least one stage", spec.loc(""),
                        hint="add e.g. `stage pooling x2 @64`")
    res = _check_resolutions(spec)
    prev = None
    for i, st in enumerate(spec.stages):
        _check_stage(spec, i, st, res[i], prev)
        prev = st.width
    last = spec.stages[-1]
    ctx = BuildContext(last.width, res[-1], len(spec.stages) - 1, 0)
    check_call("norm", spec.output_norm, ctx)
    check_call("head", spec.head, ctx)
    _check_eval(spec)
    if spec.recipe is not None:
        check_recipe(spec.recipe)
    _check_limits(spec)
    if size_limits:
        _check_size(spec)
    return spec


# --- helpers --------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Upper bounds far beyond any real model; they keep absurd values from reaching the
# meta-device size check (which would overflow storage sizes or exhaust host memory).
MAX_DEPTH = 1000
MAX_WIDTH = 1 << 20
MAX_SIDE = 65536
MAX_CLASSES = 1 << 24
MAX_KERNEL = 1024


def _positive_int(node: Any, name: str, v: Any, what: Optional[str] = None,
                  upper: Optional[int] = None) -> None:
    what = what or name
    if not _is_int(v):
        raise SpecError(f"{what} must be an integer, got {_show(v)}", node.loc(name))
    if v < 1:
        raise SpecError(f"{what} must be >= 1, got {v}", node.loc(name))
    if upper is not None and v > upper:
        raise SpecError(f"{what} {v} is out of range", node.loc(name),
                        hint=f"allowed: 1 to {upper}")


def _show(v: Any) -> str:
    if isinstance(v, Call):
        return f"'{v.name}(...)'" if v.args else f"'{v.name}'"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"'{v}'"
    if v is None:
        return "none"
    return repr(v)


def _check_resolutions(spec: ModelSpec) -> list:
    h, w = spec.img_size
    out = []
    for i, st in enumerate(spec.stages):
        ds = spec.stem if i == 0 else st.downsample
        if ds is not None:
            _check_downsample(ds, "stem" if i == 0 else f"stage {i} downsample")
            for dim_name, size in (("height", h), ("width", w)):
                if size % ds.stride:
                    where = "the stem" if i == 0 else f"the downsampling before stage {i}"
                    raise SpecError(
                        f"input {dim_name} {spec.img_size[0 if dim_name == 'height' else 1]} "
                        f"cannot be divided by the downsampling: {where} (stride "
                        f"{ds.stride}) sees {size}",
                        spec.loc("img_size"),
                        hint=f"use an input size divisible by {_total_stride(spec)}",
                    )
            h = (h + 2 * ds.padding - ds.kernel) // ds.stride + 1
            w = (w + 2 * ds.padding - ds.kernel) // ds.stride + 1
            if h < 1 or w < 1:
                raise SpecError(f"the feature map of stage {i} would be empty ({h}x{w})",
                                ds.loc(""), hint="use a larger input or fewer downsamplings")
        out.append((h, w))
    return out


def _total_stride(spec: ModelSpec) -> int:
    s = 1
    for i, st in enumerate(spec.stages):
        ds = spec.stem if i == 0 else st.downsample
        if ds is not None:
            s *= ds.stride
    return s


def _check_downsample(ds: DownsampleSpec, what: str) -> None:
    _positive_int(ds, "kernel", ds.kernel, f"{what} kernel", MAX_KERNEL)
    _positive_int(ds, "stride", ds.stride, f"{what} stride", MAX_KERNEL)
    if not _is_int(ds.padding) or ds.padding < 0:
        raise SpecError(f"{what} padding must be an integer >= 0, got {_show(ds.padding)}",
                        ds.loc("padding"))
    if ds.padding >= ds.kernel:
        raise SpecError(f"{what} padding {ds.padding} is not smaller than its kernel "
                        f"{ds.kernel}", ds.loc("padding"), hint=f"use padding <= {ds.kernel // 2}")


def _check_stage(spec: ModelSpec, i: int, st: StageSpec, res: Tuple[int, int],
                 prev: Optional[int]) -> None:
    _positive_int(st, "depth", st.depth, f"stage {i} depth", MAX_DEPTH)
    _positive_int(st, "width", st.width, f"stage {i} width", MAX_WIDTH)
    if not _is_number(st.mlp_ratio) or not 0 < st.mlp_ratio <= 64:  # NaN fails too
        raise SpecError(f"stage {i} mlp_ratio must be a number in (0, 64], got "
                        f"{_show(st.mlp_ratio)}", st.loc("mlp_ratio"))
    if int(st.mlp_ratio * st.width) < 1:
        raise SpecError(f"stage {i} MLP would have no hidden units", st.loc("mlp_ratio"))
    if not isinstance(st.mlp_bias, bool):
        raise SpecError(f"stage {i} mlp_bias must be true or false", st.loc("mlp_bias"))
    for name in ("layer_scale", "res_scale"):
        v = getattr(st, name)
        if v is not None and (not _is_number(v) or not math.isfinite(v)):
            raise SpecError(f"stage {i} {name} must be a number (its initial value) or none, "
                            f"got {_show(v)}", st.loc(name))
    if i > 0 and st.downsample is None and prev is not None and prev != st.width:
        raise SpecError(
            f"stage {i} has no downsampling but its width {st.width} differs from stage "
            f"{i - 1}'s {prev}", st.loc("downsample"),
            hint="keep the previous width or add a downsample")
    if i > 0 and st.downsample is not None:
        for nm in ("pre_norm", "post_norm"):
            c = getattr(st.downsample, nm)
            if c is not None:
                check_call("norm", c, BuildContext(prev if nm == "pre_norm" else st.width, res, i))
    if i == 0:
        for nm in ("pre_norm", "post_norm"):
            c = getattr(spec.stem, nm)
            if c is not None:
                check_call("norm", c, BuildContext(spec.in_chans if nm == "pre_norm"
                                                   else st.width, res, 0))
    if not st.mixers:
        raise SpecError(f"stage {i} names no token mixer", st.loc("mixers"))
    if _is_int(st.depth) and len(st.mixers) > st.depth:
        # The pattern is cycled over the blocks: mixers past the depth would never be built.
        raise SpecError(f"stage {i} lists {len(st.mixers)} token mixers but has only "
                        f"{st.depth} block{'s' if st.depth != 1 else ''}; the last "
                        f"{len(st.mixers) - st.depth} would never be used",
                        st.loc("mixers"),
                        hint=f"use x{len(st.mixers)} or more blocks, or fewer mixers")
    for j, m in enumerate(st.mixers):
        check_call("mixer", m, BuildContext(st.width, res, i, j))
    check_call("activation", st.mlp_act, BuildContext(int(st.mlp_ratio * st.width), res, i))
    check_call("norm", st.norm, BuildContext(st.width, res, i))


def check_call(kind: str, c: Any, ctx: BuildContext) -> Dict[str, Any]:
    """Check a component reference and its arguments; returns the resolved arguments."""
    if isinstance(c, str):
        from .ir import call as _call

        c = _call(c)
    if not isinstance(c, Call):
        raise SpecError(f"expected a {kind} name, got {_show(c)}", None)
    comp = registry.get(kind, c.name)
    if comp is None:
        names = registry.names(kind)
        guess = nearest(c.name, names)
        hint = f"did you mean '{guess}'?" if guess else f"known {kind}s: {', '.join(names)}"
        raise SpecError(f"unknown {kind} '{c.name}'", c.loc(""), hint=hint)
    args: Dict[str, Any] = comp.defaults()
    for name, value in c.args.items():
        p = comp.param(name)
        if p is None:
            known = [q.name for q in comp.params]
            guess = nearest(name, known)
            if guess:
                hint = f"did you mean '{guess}'?"
            elif known:
                hint = f"{kind} '{c.name}' takes: {', '.join(known)}"
            else:
                hint = f"{kind} '{c.name}' takes no arguments"
            raise SpecError(f"unknown argument '{name}' for {kind} '{c.name}'",
                            c.locs.get(name) or c.loc(""), hint=hint)
        args[name] = _check_value(kind, c, p, value, ctx)
    if comp.check is not None:
        for arg, msg, hint in comp.check(ctx, args):
            raise SpecError(msg, c.locs.get(arg) or c.loc(""), hint=hint)
    return args


def _check_value(kind: str, c: Call, p: Param, v: Any, ctx: BuildContext) -> Any:
    loc = c.locs.get(p.name) or c.loc("")
    what = f"argument '{p.name}' of {kind} '{c.name}'"
    if v is None:
        if p.default is None:
            return None
        raise SpecError(f"{what} cannot be none", loc, hint=f"expected a {p.type_name}")
    if isinstance(p.type, str):  # a nested component
        if not isinstance(v, (str, Call)):
            raise SpecError(f"{what} must be a {p.type} name, got {_show(v)}", loc)
        check_call(p.type, v if isinstance(v, Call) else _named(v, loc), ctx)
        return v
    ok = {
        int: _is_int(v),
        float: _is_number(v),
        bool: isinstance(v, bool),
        str: isinstance(v, str),
    }.get(p.type, True)
    if not ok:
        raise SpecError(f"{what} must be {_article(p.type_name)}, got {_show(v)}", loc,
                        hint=f"allowed: {p.range_text()}")
    if p.type is float:
        v = float(v)
        if not math.isfinite(v):
            raise SpecError(f"{what} must be finite, got {v}", loc)
    if p.choices and v not in p.choices:
        guess = nearest(str(v), [str(x) for x in p.choices]) if isinstance(v, str) else None
        raise SpecError(f"{what} must be one of {', '.join(map(str, p.choices))}, got {_show(v)}",
                        loc, hint=f"did you mean '{guess}'?" if guess else None)
    if _is_number(v):
        low_bad = p.min is not None and (v <= p.min if p.min_exclusive else v < p.min)
        high_bad = p.max is not None and v > p.max
        if low_bad or high_bad:
            raise SpecError(f"{what} is out of range: {v}", loc, hint=f"allowed: {p.range_text()}")
    return v


def _named(name: str, loc: Optional[Loc]) -> Call:
    c = Call(name=name)
    if loc is not None:
        c.locs[""] = loc
    return c


def _article(t: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false",
            "str": "a string"}.get(t, f"a {t}")


def _check_eval(spec: ModelSpec) -> None:
    ev = spec.eval
    if not _is_number(ev.crop_pct) or not 0 < ev.crop_pct <= 1:
        raise SpecError(f"crop_pct must be in (0, 1], got {_show(ev.crop_pct)}",
                        ev.loc("crop_pct"))
    if ev.interpolation not in INTERPOLATIONS[:3]:
        guess = nearest(str(ev.interpolation), INTERPOLATIONS[:3])
        raise SpecError(f"unknown interpolation {_show(ev.interpolation)}",
                        ev.loc("interpolation"),
                        hint=f"did you mean '{guess}'?" if guess else "bilinear, bicubic or nearest")
    for name in ("mean", "std"):
        v = getattr(ev, name)
        if name not in ev.locs and len(v) != spec.in_chans:
            # The default is ImageNet's RGB statistics; other inputs must state their own.
            raise SpecError(
                f"the default eval {name} has {len(v)} values (ImageNet RGB) but the input "
                f"has {spec.in_chans} channel{'s' if spec.in_chans != 1 else ''}",
                spec.loc("in_chans"),
                hint=f"set eval mean and std to {spec.in_chans} value(s) each, one per input "
                     "channel")
        if len(v) != spec.in_chans or not all(_is_number(x) and math.isfinite(x) for x in v):
            raise SpecError(f"{name} must be {spec.in_chans} numbers, one per input channel",
                            ev.loc(name))
    if any(x <= 0 for x in ev.std):
        raise SpecError("std values must be > 0", ev.loc("std"))


_RECIPE_RANGES = {
    # name: (type, min, max, min_exclusive)
    "epochs": (int, 1, 100_000, False),
    "batch_size": (int, 1, 10_000_000, False),
    "lr": (float, 0.0, 10.0, True),
    "lr_batch": (int, 1, 10_000_000, False),
    "weight_decay": (float, 0.0, 10.0, False),
    "opt_eps": (float, 0.0, 1.0, True),
    "momentum": (float, 0.0, 1.0, False),
    "warmup_epochs": (int, 0, 100_000, False),
    "warmup_lr": (float, 0.0, 10.0, False),
    "min_lr": (float, 0.0, 10.0, False),
    "drop_path": (float, 0.0, 0.99, False),
    "head_dropout": (float, 0.0, 0.99, False),
    "label_smoothing": (float, 0.0, 0.99, False),
    "mixup": (float, 0.0, 100.0, False),
    "cutmix": (float, 0.0, 100.0, False),
    "mixup_switch_prob": (float, 0.0, 1.0, False),
    "random_erasing": (float, 0.0, 1.0, False),
}


def check_recipe(r: RecipeSpec) -> None:
    for name, (typ, lo, hi, excl) in _RECIPE_RANGES.items():
        v = getattr(r, name)
        if typ is int and not _is_int(v) or typ is float and not _is_number(v):
            raise SpecError(f"train {name} must be {_article(typ.__name__)}, got {_show(v)}",
                            r.loc(name))
        if not math.isfinite(v):
            raise SpecError(f"train {name} must be finite, got {v}", r.loc(name))
        if (v <= lo if excl else v < lo) or v > hi:
            rng = f"{'>' if excl else '>='} {lo} and <= {hi}"
            raise SpecError(f"train {name} is out of range: {v}", r.loc(name),
                            hint=f"allowed: {rng}")
    for name, choices in (("optimizer", OPTIMIZERS), ("sched", SCHEDULES),
                          ("train_interpolation", INTERPOLATIONS)):
        v = getattr(r, name)
        if v not in choices:
            guess = nearest(str(v), choices)
            raise SpecError(f"unknown train {name} {_show(v)}", r.loc(name),
                            hint=f"did you mean '{guess}'?" if guess else
                            f"one of {', '.join(choices)}")
    if len(r.betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in r.betas):  # NaN fails
        raise SpecError("train betas must be two numbers in [0, 1)", r.loc("betas"))
    if r.ema is not None and (not _is_number(r.ema) or not 0 < r.ema < 1):
        raise SpecError(f"train ema (the decay) must be in (0, 1), got {_show(r.ema)}",
                        r.loc("ema"))
    if r.clip_grad is not None and (not _is_number(r.clip_grad) or r.clip_grad <= 0):
        raise SpecError(f"train clip_grad must be > 0, got {_show(r.clip_grad)}",
                        r.loc("clip_grad"))
    if r.randaugment is not None and not _valid_randaugment(r.randaugment):
        raise SpecError(f"train randaugment {_show(r.randaugment)} is not a RandAugment "
                        "config string", r.loc("randaugment"),
                        hint="e.g. 'rand-m9-mstd0.5-inc1'")
    if r.warmup_epochs > r.epochs:
        raise SpecError(f"train warmup_epochs {r.warmup_epochs} exceeds epochs {r.epochs}",
                        r.loc("warmup_epochs"))


def _valid_randaugment(s: Any) -> bool:
    if not isinstance(s, str) or not s.startswith("rand"):
        return False
    for part in s.split("-")[1:]:
        if not part or not part[0].isalpha():
            return False
    return True


def _check_size(spec: ModelSpec) -> None:
    """Build on the meta device (no storage) and compare with the user's limits."""
    from .analysis.counting import count_macs_meta, count_params_meta

    try:
        params = count_params_meta(spec)
        macs = count_macs_meta(spec)
    except (MemoryError, OverflowError, RuntimeError) as exc:
        raise SpecError(f"the model is too large to build: {exc}", spec.loc(""),
                        hint="reduce depths, widths or the input size") from None
    lim = spec.limits
    if params > lim.max_params:
        raise SpecError(
            "model has {} parameters, over the limit of {}".format(
                *_counts(params, lim.max_params)), lim.loc("max_params") or spec.loc(""),
            hint="raise it with `limits { params 2G }` or --max-params")
    if macs > lim.max_macs:
        raise SpecError(
            "model needs {} MACs per image, over the limit of {}".format(
                *_counts(macs, lim.max_macs)), lim.loc("max_macs") or spec.loc(""),
            hint="raise it with `limits { macs 2T }` or --max-macs")


def _counts(value: int, limit: int) -> Tuple[str, str]:
    """Both counts in the units limits are written in (950, 12.3K, 26.1M, 4.1G); exact
    when rounding would make them look equal."""
    def short(n: int) -> str:
        for suffix, unit in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
            if n >= unit:
                return f"{n / unit:.1f}{suffix}"
        return str(n)

    a, b = short(value), short(limit)
    return (a, b) if a != b else (f"{value:,}", f"{limit:,}")


def _check_limits(spec: ModelSpec) -> None:
    lim = spec.limits
    for name, what in (("max_params", "params"), ("max_macs", "macs")):
        v = getattr(lim, name)
        if not _is_int(v) or v < 1:
            raise SpecError(f"limit {what} must be a count >= 1, got {_show(v)}",
                            lim.loc(name), hint="e.g. `limits { params 2G  macs 50G }`")

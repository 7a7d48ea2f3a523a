"""Semantic checks on the IR, run before any real tensor is allocated.

Each problem raises :class:`SpecError` at the location of the offending field, with a
hint where one helps (nearest valid name, allowed range). A single value (a setting or a
component argument) is checked against its field by :func:`.values.check_value`.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

from .. import layers  # noqa: F401 - registers the built-in components the checks look up
from ..data.augment import AugmentError, parse_augment
from ..errors import Loc, SpecError, nearest
from ..ir import (MAX_SIDE, Call, DownsampleSpec, ModelSpec, RecipeSpec, Setting, StageSpec,
                  settings_of)
from ..layers.block import mlp_hidden
from ..registry import POOLED, BuildContext, Param, RegistryError, registry
from .values import check_value, expected_text
from .values import is_int as _is_int
from .values import show as _show


def check(spec: ModelSpec) -> ModelSpec:
    """Raise SpecError for the first problem in ``spec``; return it unchanged if valid.

    Semantic checks only: the size limits are the next step (:mod:`mfdsl.size_limits`),
    and :func:`mfdsl.api.check_spec` runs both.
    """
    try:
        return _check(spec)
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


def _check(spec: ModelSpec) -> ModelSpec:
    if not isinstance(spec.name, str) or not _MODEL_NAME.match(spec.name):
        raise SpecError(f"model name {_show(spec.name)} is not a plain name", spec.loc("name"),
                        hint="letters, digits and _, not starting with a digit, e.g. "
                             "caformer_s18")
    check_settings(spec, {"in_chans": "input channels", "num_classes": "classes",
                          "img_size": "input size"})
    if not spec.stages:
        raise SpecError("a model needs at least one stage", spec.loc(""),
                        hint="add e.g. `stage pooling x2 @64`")
    res = _check_resolutions(spec)
    prev = None
    for i, st in enumerate(spec.stages):
        _check_stage(spec, i, st, res[i], prev)
        prev = st.width
    last = spec.stages[-1]
    ctx = BuildContext(last.width, res[-1], len(spec.stages) - 1, 0, position=POOLED)
    check_call("norm", spec.output_norm, ctx)
    check_call("head", spec.head, ctx)
    if spec.dense is not None:
        _check_dense(spec, res)
    _check_eval(spec)
    if spec.recipe is not None:
        check_recipe(spec.recipe)
    _check_limits(spec)
    return spec


# --- the settings' own types and ranges, from the IR's field metadata ----------------------

def check_settings(node: Any, labels: Optional[Dict[str, str]] = None,
                   prefix: str = "") -> None:
    """Check every declared setting of ``node`` (not components: they need a context)
    against its type, range and choices; ``labels`` / ``prefix`` name it in messages."""
    for name, meta, _ in settings_of(type(node)):
        if meta.is_component:
            continue
        # A grouped setting is named by its one-word spelling (mlp_ratio), so it reads alone.
        label = (labels or {}).get(name) or f"{prefix}{name if meta.group else meta.key or name}"
        check_setting(node, name, meta, getattr(node, name), label)


def check_setting(node: Any, name: str, meta: Setting, v: Any, label: str) -> None:
    """Check one setting's value ``v``, reported at ``node``'s location for ``name``."""
    check_value(meta, v, label, node.loc(name))


def _check_resolutions(spec: ModelSpec) -> list:
    """Each stage's (H, W) by the convs' floor formula: any input size that leaves every
    map non-empty runs (a side need not be a multiple of the total stride)."""
    h, w = spec.img_size
    out = []
    for i, st in enumerate(spec.stages):
        ds = spec.stem if i == 0 else st.downsample
        if ds is not None:
            _check_downsample(ds, "stem" if i == 0 else f"stage {i} downsample")
            h, w = ds.out_size(h), ds.out_size(w)
            if h < 1 or w < 1:
                raise SpecError(f"the feature map of stage {i} would be empty ({h}x{w})",
                                ds.loc("") or spec.loc("img_size"), hint="use a larger input or fewer downsamplings")
        out.append((h, w))
    return out


def _check_downsample(ds: DownsampleSpec, what: str) -> None:
    check_settings(ds, prefix=f"{what} ")
    if ds.padding >= ds.kernel:
        raise SpecError(f"{what} padding {ds.padding} is not smaller than its kernel "
                        f"{ds.kernel}", ds.loc("padding"), hint=f"use padding <= {ds.kernel // 2}")


def _check_stage(spec: ModelSpec, i: int, st: StageSpec, res: Tuple[int, int],
                 prev: Optional[int]) -> None:
    check_settings(st, prefix=f"stage {i} ")
    if mlp_hidden(st.mlp_ratio, st.width) < 1:
        raise SpecError(f"stage {i} MLP would have no hidden units", st.loc("mlp_ratio"))
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
    check_call("activation", st.mlp_act, BuildContext(mlp_hidden(st.mlp_ratio, st.width), res, i))
    check_call("norm", st.norm, BuildContext(st.width, res, i))


def _check_dense(spec: ModelSpec, res: list) -> None:
    """Outputs name existing stages in increasing order; each output's norm works on a
    map; every mixer runs at any input size (a backbone sees many)."""
    d = spec.dense
    n = len(spec.stages)
    prev = -1
    for i in d.outputs:
        if not _is_int(i) or not 0 <= i < n:
            raise SpecError(f"dense output {_show(i)} is not a stage of this model (0 to "
                            f"{n - 1})", d.loc("outputs"))
        if i <= prev:
            raise SpecError(f"dense outputs must be increasing stage indices, got "
                            f"{', '.join(str(x) for x in d.outputs)}", d.loc("outputs"))
        prev = i
    for i in sorted(d.norms):
        if i not in d.outputs:
            raise SpecError(f"dense norm for stage{i}, which is not among the outputs",
                            d.loc(f"stage{i}"), hint="add it to outputs or remove the norm")
    for i in d.outputs:
        check_call("norm", d.norm_for(i), BuildContext(spec.stages[i].width, res[i], i))
    check_any_size(spec, "this spec has dense outputs (a detection or segmentation backbone "
                         "sees images of any size)")


def check_any_size(spec: ModelSpec, reason: str, prefix: str = "") -> None:
    """Refuse, at the mixer, a mixer sized for the spec's input (``any_size=False``);
    ``reason`` says why another size is asked for."""
    for i, st in enumerate(spec.stages):
        for m in st.mixers:
            comp = registry.get("mixer", m.name)
            if comp is not None and not comp.any_size:
                raise SpecError(
                    f"{prefix}stage {i} mixer '{m.name}' is sized for the spec's input and "
                    f"cannot run at other sizes, but {reason}", m.loc() or st.loc("mixers"),
                    hint="mixers that take any input size: " + ", ".join(
                        n for n in registry.names("mixer") if registry.get("mixer", n).any_size))


def check_call(kind: str, c: Any, ctx: BuildContext) -> Dict[str, Any]:
    """Check a component reference and its arguments; returns the resolved arguments."""
    if isinstance(c, str):
        from .ir import call as _call

        c = _call(c)
    if not isinstance(c, Call):
        raise SpecError(f"expected a {kind} name, got {_show(c)}", None)
    try:
        comp = registry.get(kind, c.name)
    except RegistryError as exc:
        raise SpecError(str(exc), c.loc("")) from None
    if comp is None:
        names = registry.names(kind)
        guess = nearest(c.name, names)
        hint = f"did you mean '{guess}'?" if guess else f"known {kind}s: {', '.join(names)}"
        raise SpecError(f"unknown {kind} '{c.name}'", c.loc(""), hint=hint)
    if kind == "norm" and ctx.position not in comp.positions:
        raise SpecError(
            f"norm '{c.name}' is not defined on the pooled (B, C) features the head sees",
            c.loc(""), hint="use layernorm (each image normalised on its own) or identity; "
            "a Python norm must declare positions=(MAP, POOLED) when it is correct there"
            if ctx.position == POOLED else "this norm only works on pooled features")
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
    field = p.field
    if field.is_component and v is not None:  # a nested component: needs the context
        if not isinstance(v, (str, Call)):
            raise SpecError(f"{what} must be {expected_text(field.type)} name, got {_show(v)}",
                            loc)
        check_call(field.type, v if isinstance(v, Call) else _named(v, loc), ctx)
        return v
    return check_value(field, v, what, loc)


def _named(name: str, loc: Optional[Loc]) -> Call:
    c = Call(name=name)
    if loc is not None:
        c.locs[""] = loc
    return c


def _check_eval(spec: ModelSpec) -> None:
    ev = spec.eval
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
        if not isinstance(v, (tuple, list)) or len(v) != spec.in_chans:
            raise SpecError(f"{name} must be {spec.in_chans} numbers, one per input channel",
                            ev.loc(name))
    check_settings(ev)
    # The eval transform resizes to img_size / crop_pct before cropping (timm's rule): a
    # tiny crop_pct would ask for an image of millions of pixels a side at eval time.
    side = max(spec.img_size) / ev.crop_pct
    if side > MAX_SIDE:
        raise SpecError(f"crop_pct {_show(ev.crop_pct)} would resize the {max(spec.img_size)} px "
                        f"input to {side:,.0f} px before cropping", ev.loc("crop_pct"),
                        hint=f"use crop_pct >= {max(spec.img_size) / MAX_SIDE:.3g}")


def check_recipe(r: RecipeSpec) -> None:
    check_settings(r, prefix="train ")
    if r.randaugment is not None:
        try:
            parse_augment(r.randaugment)
        except AugmentError as exc:
            raise SpecError(f"train randaugment {_show(r.randaugment)}: {exc.message}",
                            r.loc("randaugment"), hint=exc.hint) from None
    _check_recipe_combinations(r)
    _check_finetune(r)
    if r.warmup_epochs > r.epochs:
        raise SpecError(f"train warmup_epochs {r.warmup_epochs} exceeds epochs {r.epochs}",
                        r.loc("warmup_epochs"))


def _check_recipe_combinations(r: RecipeSpec) -> None:
    """Settings that would be silently ignored by the optimizer the recipe names."""
    base = RecipeSpec()
    unused = ({"momentum": "sgd"} if r.optimizer != "sgd" else
              {"betas": "adamw and lamb", "opt_eps": "adamw and lamb"})
    for name, users in unused.items():
        if getattr(r, name) != getattr(base, name):
            raise SpecError(f"train {name} is set but the optimizer {r.optimizer} does not use "
                            f"it (only {users} do)", r.loc(name),
                            hint=f"remove {name}, or change the optimizer")
    if r.sched == "constant" and r.min_lr != base.min_lr:
        raise SpecError("train min_lr is set but the constant schedule does not use it",
                        r.loc("min_lr"), hint="remove min_lr, or use sched cosine")
    if r.sched == "constant" and r.warmup_mode != base.warmup_mode:
        raise SpecError("train warmup_mode is set but the constant schedule has no cosine for "
                        "the warmup to compose with", r.loc("warmup_mode"),
                        hint="remove warmup_mode, or use sched cosine")
    if r.sched == "constant" and r.cooldown_epochs:
        raise SpecError("train cooldown_epochs is set but the constant schedule has no decay "
                        "to cool down from", r.loc("cooldown_epochs"),
                        hint="remove cooldown_epochs, or use sched cosine")
    if r.warmup_epochs == 0 and r.warmup_lr != base.warmup_lr:
        raise SpecError("train warmup_lr is set but there is no warmup (warmup_epochs 0)",
                        r.loc("warmup_lr"), hint="remove warmup_lr, or set warmup_epochs")
    if (r.mixup == 0 or r.cutmix == 0) and r.mixup_switch_prob != base.mixup_switch_prob:
        raise SpecError("train mixup_switch_prob is set but only matters when both mixup and "
                        "cutmix are on", r.loc("mixup_switch_prob"),
                        hint="remove it, or turn on both mixup and cutmix")


def _check_finetune(r: RecipeSpec) -> None:
    """The selections' syntax, and fine-tuning modes that exclude each other."""
    from ..layers.select import parse_selection

    for name in ("freeze", "adapters"):
        text = getattr(r, name)
        if text is not None:
            try:
                parse_selection(text)
            except ValueError as exc:
                raise SpecError(f"train {name} {_show(text)}: {exc}", r.loc(name),
                                hint="e.g. freeze \"stem stage0-1\", adapters \"mixer mlp\""
                                ) from None
    base = RecipeSpec()
    if r.adapters is None:
        for name in ("adapter_rank", "adapter_alpha", "adapter_dropout"):
            if getattr(r, name) != getattr(base, name):
                raise SpecError(f"train {name} is set but there are no adapters", r.loc(name),
                                hint="remove it, or name the layers in adapters")
    modes = [n for n in ("linear_probe", "adapters", "freeze") if getattr(r, n)]
    if len(modes) > 1:
        raise SpecError(f"train {modes[0]} and {modes[1]} both choose what trains "
                        "(linear_probe: the head; adapters: adapters and the head; freeze: "
                        "all but the parts named)", r.loc(modes[1]), hint="keep one")


def _check_limits(spec: ModelSpec) -> None:
    check_settings(spec.limits, prefix="limit ")

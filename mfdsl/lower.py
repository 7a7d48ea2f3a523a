"""Lowering: a checked ModelSpec -> a MetaFormer nn.Module."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn

from .errors import SpecError
from .ir import Call, DownsampleSpec, ModelSpec, StageSpec, call, settings_of
from .layers.dense import DenseNorms
from .layers.block import Block, Downsample, Mlp, Stage, mlp_hidden
from .layers.variants import select_variants, variants_for, variants_in_use
from .model import ClassifierHead, MetaFormer
from .registry import POOLED, BuildContext, Maker, registry, resolve_args


def as_call(value: Any) -> Call:
    """A ref-type argument (a name or a Call) as a Call."""
    return value if isinstance(value, Call) else call(str(value))


def make_component(kind: str, c: Call, ctx: BuildContext, **extra: Any) -> nn.Module:
    comp = registry.get(kind, c.name)
    if comp is None:  # the checker reports this with a location first
        raise SpecError(f"unknown {kind} '{c.name}'", c.loc())
    args = resolve_args(comp, c.args)
    for p in comp.params:
        if isinstance(p.type, str) and args.get(p.name) is not None:
            args[p.name] = _maker(p.type, as_call(args[p.name]), ctx)
    try:
        return comp.factory(ctx, **extra, **args)
    except SpecError:
        raise
    except Exception as exc:  # a plugin's factory failing is still the spec's problem
        raise SpecError(f"cannot build {kind} '{c.name}': {exc}", c.loc()) from exc


def _maker(kind: str, c: Call, ctx: BuildContext) -> Maker:
    def make(dim: int) -> nn.Module:
        return make_component(kind, c, replace(ctx, dim=dim))

    return make


def _norm(c: Optional[Call], ctx: BuildContext) -> Optional[nn.Module]:
    return None if c is None else make_component("norm", c, ctx)


def _downsample(ds: DownsampleSpec, in_chs: int, out_chs: int, stage: int,
                in_res, out_res, target: str, nchw_input: bool = False) -> nn.Module:
    pre = _norm(ds.pre_norm, BuildContext(in_chs, in_res, stage, 0, target))
    post = _norm(ds.post_norm, BuildContext(out_chs, out_res, stage, 0, target))
    return Downsample(in_chs, out_chs, ds.kernel, ds.stride, ds.padding, ds.bias,
                      pre, post, nchw_input=nchw_input)


def group_args(st: StageSpec, group: str) -> Dict[str, Any]:
    """The stage settings of ``group`` that its layer takes as keyword arguments, by their
    written key (``mlp bias`` -> ``bias=``). Ratio and act are used above to build it; any
    other setting declared in the group (a new ``mlp dropout``) reaches the layer as is."""
    return {meta.key or name: getattr(st, name) for name, meta, _ in settings_of(StageSpec)
            if meta.group == group and (meta.key or name) not in ("ratio", "act")}


def drop_path_rates(spec: ModelSpec) -> List[List[float]]:
    """Linear from 0 to the recipe's drop_path over all blocks of the model."""
    total = sum(spec.depths)
    rate = spec.drop_path_rate
    flat = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, k = [], 0
    for d in spec.depths:
        out.append(flat[k:k + d])
        k += d
    return out


def lower(spec: ModelSpec, target: str = "cpu",
          variants: Optional[Sequence[str]] = None) -> MetaFormer:
    """Build the module graph. The spec must already have passed ``checks.check``.

    ``target`` ("cpu", "cuda" or "reference") picks the eager speed variants of the layers
    (:data:`mfdsl.layers.variants.VARIANTS_FOR`); "reference" builds the paper's forms.
    ``variants`` names them instead (a run's device plan: e.g. CUDA's compiled set)."""
    res = spec.stage_resolutions()
    dprs = drop_path_rates(spec)
    stem = _downsample(spec.stem, spec.in_chans, spec.stages[0].width, 0,
                       spec.img_size, res[0], target, nchw_input=True)
    stages = []
    prev = spec.stages[0].width
    for i, st in enumerate(spec.stages):
        if i == 0 or st.downsample is None:
            ds: nn.Module = nn.Identity()
        else:
            ds = _downsample(st.downsample, prev, st.width, i, res[i - 1], res[i], target)
        blocks = []
        for j in range(st.depth):
            ctx = BuildContext(st.width, res[i], i, j, target)
            mixer = make_component("mixer", st.mixer_for_block(j), ctx)
            hidden = mlp_hidden(st.mlp_ratio, st.width)
            act = make_component("activation", st.mlp_act,
                                 BuildContext(hidden, res[i], i, j, target))
            mlp = Mlp(st.width, hidden, act, **group_args(st, "mlp"))
            blocks.append(Block(
                st.width, make_component("norm", st.norm, ctx), mixer,
                make_component("norm", st.norm, ctx), mlp, dprs[i][j],
                st.layer_scale, st.res_scale,
            ))
        stages.append(Stage(ds, blocks))
        prev = st.width
    ctx = BuildContext(prev, res[-1], len(spec.stages) - 1, 0, target, position=POOLED)
    head = ClassifierHead(make_component("norm", spec.output_norm, ctx),
                          make_classifier(spec, spec.num_classes, target))
    dense = None
    if spec.dense is not None:
        dense = DenseNorms({i: make_component("norm", spec.dense.norm_for(i), BuildContext(
            spec.stages[i].width, res[i], i, 0, target)) for i in spec.dense.outputs})
    model = MetaFormer(spec, stem, stages, head, dense)
    model.make_classifier = ClassifierMaker(spec, target)
    init_weights(model)
    # The layers are built in their reference form; the target's eager speed variants
    # (same parameters, same maths) replace them here.
    select_variants(model, variants_for(target) if variants is None else variants)
    return model


def make_classifier(spec: ModelSpec, num_classes: int, target: str = "cpu") -> nn.Module:
    """The spec's head kind for ``num_classes``, on the pooled features of its last stage
    (not initialised; built on the current default device)."""
    last = len(spec.stages) - 1
    ctx = BuildContext(spec.stages[last].width, spec.stage_resolutions()[last], last, 0,
                       target, position=POOLED)
    return make_component("head", spec.head, ctx, num_classes=num_classes,
                          dropout=spec.head_dropout)


class ClassifierMaker:
    """How ``MetaFormer.reset_classifier`` builds a new classifier: the spec's head kind
    and dropout, freshly initialised, running the speed variants the model runs. A plain
    object (not a closure), so a model pickles with it."""

    def __init__(self, spec: ModelSpec, target: str) -> None:
        self.head = as_call(spec.head)
        self.dropout = spec.head_dropout
        self.target = target

    def __call__(self, model: nn.Module, num_classes: int) -> nn.Module:
        last = len(model.stages) - 1
        ctx = BuildContext(model.num_features, model.spec.stage_resolutions()[last], last, 0,
                           self.target, position=POOLED)
        fc = make_component("head", self.head, ctx, num_classes=num_classes,
                            dropout=self.dropout)
        init_weights(fc)
        select_variants(fc, variants_in_use(model))
        return fc


def init_weights(model: nn.Module) -> None:
    """trunc_normal(std=0.02) for Conv2d / Linear weights, zero biases (the paper's init)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if m.weight.device.type != "meta":
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

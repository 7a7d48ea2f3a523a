"""mfdsl models in timm's registry: ``import mfdsl.timm`` and every zoo spec is a timm model.

    import timm, mfdsl.timm
    model = timm.create_model("mfdsl_caformer_s18", pretrained=True)
    backbone = timm.create_model("mfdsl_hybrid_gfnet_caformer", features_only=True,
                                 out_indices=(1, 2, 3))
    mfdsl.timm.register("my_hybrid.mf")   # -> "mfdsl_<the spec's model name>"

Entry points go through timm's ``register_model`` and ``build_model_with_cfg``, so
``features_only`` gives timm's ``FeatureGetterNet`` (over ``forward_intermediates``, which
returns NCHW maps; the stage modules themselves run channels-last, so timm's module-walking
``FeatureListNet`` does not fit them). ``pretrained=True`` (or a tag, ``mfdsl_caformer_s18
.sail_in22k_ft_in1k``) loads the release from mfdsl's table (:mod:`mfdsl.weights`), verified,
through the local Hugging Face cache; it never uses timm's downloader.

timm's registry holds each model's pretrained cfgs (``timm.list_pretrained("mfdsl_*")``,
``get_pretrained_cfg``): one per release that fits the spec, the default first, or one
without weights for a spec that has none; registering reads the zoo's spec files (no
checks, no weights).

Keyword arguments a timm model takes: ``num_classes`` (0: no classifier; with pretrained
weights a different count gets a new, untrained head, as in timm), ``global_pool``,
``drop_path_rate`` and ``drop_rate`` (default 0 like a timm model, not the spec's recipe:
timm's train.py passes its own), ``in_chans`` (mean and std adapted, pretrained stem
weights adapted as timm's ``adapt_input_conv`` does), ``pretrained_cfg`` (a tag, or a
cfg) and ``pretrained_cfg_overlay`` (fields over it), ``device``, ``dtype``.
"""
from __future__ import annotations

import os
import sys
from collections import deque
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from .ir import EvalSpec, ModelSpec, RecipeSpec, with_overrides
from .pipeline import SpecLike, check_spec, load_spec
from .resources import zoo_dir

PREFIX = "mfdsl_"

__all__ = ["PREFIX", "register", "register_zoo", "create"]

# model name -> the spec source it builds (a path or a ModelSpec)
_SOURCES: Dict[str, SpecLike] = {}
# model name -> timm's DefaultCfg (its pretrained cfgs by tag): timm's register_model reads
# the ``default_cfgs`` of the entry point's module
default_cfgs: Dict[str, Any] = {}

# cfg keys that say where weights come from: mfdsl's release table decides that
_WEIGHT_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename")


def adapt_channels(values: Tuple[float, ...], in_chans: int) -> Tuple[float, ...]:
    """Per-channel mean or std for ``in_chans`` input channels, as the stem's weights are
    adapted (:func:`adapt_stem_weight`): one channel stands for all (their average); more
    repeat the channels in order."""
    if in_chans == len(values):
        return tuple(values)
    if in_chans == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_chans))


def adapt_stem_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A stem conv weight (out, c, k, k) for ``in_chans`` inputs, as timm's
    ``adapt_input_conv``: 1 channel gets the sum over the c (a grey image seen as c equal
    channels); more repeat the c in order, scaled by c / in_chans so a constant image
    gives the same response."""
    c = weight.shape[1]
    if in_chans == c:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(1, keepdim=True)
    else:
        w = w.repeat(1, -(-in_chans // c), 1, 1)[:, :in_chans] * (c / in_chans)
    return w.to(weight.dtype)


def _spec_for_timm(spec: ModelSpec, in_chans: Optional[int], drop_path_rate: Optional[float],
                   drop_rate: Optional[float]) -> ModelSpec:
    recipe = spec.recipe if spec.recipe is not None else RecipeSpec()
    recipe = with_overrides(recipe, drop_path=float(drop_path_rate or 0.0),
                            head_dropout=float(drop_rate or 0.0))
    changes: Dict[str, Any] = dict(recipe=recipe)
    if in_chans is not None and in_chans != spec.in_chans:
        changes.update(in_chans=int(in_chans), eval=_eval_for(spec.eval, int(in_chans)))
    return with_overrides(spec, **changes)


def _eval_for(ev: EvalSpec, in_chans: int) -> EvalSpec:
    return with_overrides(ev, mean=adapt_channels(tuple(ev.mean), in_chans),
                          std=adapt_channels(tuple(ev.std), in_chans))


def _build(spec: ModelSpec, which: Union[bool, str], *, num_classes: Optional[int] = None,
           in_chans: Optional[int] = None, global_pool: Optional[str] = None,
           drop_path_rate: Optional[float] = None, drop_rate: Optional[float] = None,
           device: Any = None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The model timm's build_model_with_cfg instantiates (its ``model_cls``)."""
    from .api import build_model
    from .layers.contract import check_global_pool

    if in_chans is not None and (isinstance(in_chans, bool) or not isinstance(in_chans, int)
                                 or in_chans < 1):
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
    adapted = _spec_for_timm(spec, in_chans, drop_path_rate, drop_rate)
    if not which and num_classes:
        adapted = with_overrides(adapted, num_classes=int(num_classes))
    if which and adapted.in_chans != spec.in_chans:
        # the release loads into the spec's own stem; its conv weight is then adapted
        trained = build_model(with_overrides(adapted, in_chans=spec.in_chans, eval=spec.eval),
                              pretrained=which)
        model = build_model(adapted)
        state = trained.state_dict()
        key = model.pretrained_cfg["first_conv"] + ".weight"
        state[key] = adapt_stem_weight(state[key], adapted.in_chans)
        model.load_state_dict(state)
    else:
        model = build_model(adapted, pretrained=which or None)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(int(num_classes))
    if global_pool is not None:
        model.head.global_pool = check_global_pool(global_pool)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def create(name: str, pretrained: bool = False,
           pretrained_cfg: Union[str, Dict[str, Any], None] = None,
           pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
           **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` as timm's entry point does (timm.create_model
    calls this); ``pretrained_cfg`` a str is a release tag (``name.tag`` in create_model)."""
    from timm.models import PretrainedCfg, build_model_with_cfg

    from .weights import WeightsError, fetch, resolve_release

    kwargs.pop("cache_dir", None)  # mfdsl reads the Hugging Face cache itself (HF_HOME)
    source = _SOURCES[name]
    spec = check_spec(source if isinstance(source, ModelSpec) else load_spec(source))
    tag = pretrained_cfg if isinstance(pretrained_cfg, str) else None
    which: Union[bool, str] = (tag or True) if pretrained else False
    release = None
    n = kwargs.get("num_classes")
    if which and n and n != spec.num_classes:
        # A release with the asked-for head (sail_in22k with num_classes=21841) loads whole;
        # otherwise the backbone loads and the classifier is new, as in timm.
        try:
            wide = with_overrides(spec, num_classes=int(n))
            release, spec = resolve_release(wide, which, purpose="eval"), wide
        except WeightsError:
            pass
    if which and release is None:
        release = resolve_release(spec, which, purpose="eval")
    if release is not None:
        fetch(release)  # a missing or corrupt file is reported before anything is built
    if isinstance(pretrained_cfg, PretrainedCfg):
        pretrained_cfg = pretrained_cfg.to_dict()
    user_cfg = pretrained_cfg if isinstance(pretrained_cfg, dict) else None
    # The cfg describes the model before timm's wrapper (build_model_with_cfg reads
    # num_classes / in_chans from it): the registry's, for the spec as read now.
    cfg = _pretrained_cfg(name, spec, release)
    for given, what in ((user_cfg, "pretrained_cfg"),
                        (pretrained_cfg_overlay, "pretrained_cfg_overlay")):
        # a registry cfg passed back names its own source, mfdsl's release: that is fine
        sources = sorted(k for k in _WEIGHT_SOURCE_KEYS
                         if (given or {}).get(k) and given[k] != cfg.get(k))
        if sources:
            raise ValueError(
                f"{what} sets {', '.join(sources)}: mfdsl models load weights from mfdsl's "
                "release table (pretrained=True or a tag) only; load another file into the "
                "built model with mfdsl.weights.load_weights")
    in_chans = kwargs.get("in_chans")
    if isinstance(in_chans, int) and in_chans >= 1 and in_chans != spec.in_chans:
        cfg.update(input_size=(in_chans, *cfg["input_size"][1:]),
                   mean=adapt_channels(tuple(cfg["mean"]), in_chans),
                   std=adapt_channels(tuple(cfg["std"]), in_chans))
    cfg.update(user_cfg or {})

    if kwargs.get("features_only"):
        fc = kwargs.get("feature_cls", "getter")
        if not (fc == "getter" or (isinstance(fc, type) and fc.__name__ == "FeatureGetterNet")):
            raise ValueError(
                f"feature_cls={fc!r}: mfdsl models give features through "
                "forward_intermediates (feature_cls='getter', the default here); their stage "
                "modules run channels-last, which timm's module-walking extractors would "
                "return as is")
        kwargs["feature_cls"] = "getter"
    n_stages = len(spec.stages)

    def model_cls(**kw: Any) -> nn.Module:
        return _build(spec, release.name if release is not None else False, **kw)

    return build_model_with_cfg(
        model_cls, name, pretrained=False,  # weights: loaded by _build from mfdsl's table
        pretrained_cfg=cfg, pretrained_cfg_overlay=pretrained_cfg_overlay,
        feature_cfg=dict(out_indices=tuple(range(n_stages))), **kwargs)


def _pretrained_cfg(name: str, spec: ModelSpec, release: Any = None) -> Dict[str, Any]:
    """timm's pretrained cfg of model ``name`` built from ``spec`` with ``release``'s
    weights (None: no weights): what timm's registry holds and the built model carries."""
    from .lower import make_classifier
    from .model import spec_pretrained_cfg

    num_classes = release.num_classes if release is not None else spec.num_classes
    with torch.device("meta"):  # where the class scores come from, nothing allocated
        fc = make_classifier(spec, num_classes)
    cfg = spec_pretrained_cfg(spec, fc)
    cfg.update(architecture=name, num_classes=num_classes)
    if release is not None:
        cfg.update(release.pretrained_cfg(), tag=release.tag, hf_hub_id=release.repo_id,
                   hf_hub_filename=release.filename)
    return cfg


def _default_cfg(name: str, spec: ModelSpec) -> Any:
    """timm's DefaultCfg of ``name``: a cfg per release that fits the spec (the one
    ``pretrained=True`` loads first), or one cfg without weights."""
    from timm.models import PretrainedCfg
    from timm.models._registry import DefaultCfg

    from .weights import WeightsError, check_fits, releases_for, resolve_release

    fitting = []
    for r in releases_for(spec.name):
        try:
            check_fits(r, with_overrides(spec, num_classes=r.num_classes), purpose="eval")
        except WeightsError:
            continue
        fitting.append(r)
    try:
        default = resolve_release(spec, True, purpose="eval")
        fitting.sort(key=lambda r: r != default)
    except WeightsError:
        pass
    cfgs = {r.tag: PretrainedCfg(**_pretrained_cfg(name, spec, r)) for r in fitting}
    if not cfgs:
        cfgs = {"": PretrainedCfg(**_pretrained_cfg(name, spec))}
    return DefaultCfg(tags=deque(cfgs), cfgs=cfgs)


def _register(name: str, source: SpecLike, spec: ModelSpec) -> None:
    """``name`` in timm's registry: its entry point and pretrained cfgs."""
    from timm.models import register_model

    _SOURCES[name] = source
    default_cfgs[name] = _default_cfg(name, spec)
    entry = _entry_point(name)
    setattr(sys.modules[__name__], name, entry)
    register_model(entry)


def _entry_point(name: str) -> Callable[..., nn.Module]:
    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"timm entry point of the mfdsl model {name}."
    return entry


def register(spec: SpecLike, name: Optional[str] = None, *, overwrite: bool = False) -> str:
    """Register a spec (a ``.mf``/``.yaml`` path or a ModelSpec) with timm as ``name``
    (default ``mfdsl_<the spec's model name>``, the name on its ``model`` line, for a file
    and a ModelSpec alike); returns the name for ``timm.create_model``.

    The spec is checked now (a SpecError here, not at create time); a file is read again at
    each create, so edits to it take effect. Registering one of mfdsl's names again
    replaces it; a name timm already has for a model of its own (``resnet50``) is refused
    unless ``overwrite=True``, since timm's registry is one for the whole process."""
    import timm

    checked = check_spec(spec if isinstance(spec, ModelSpec) else load_spec(spec))
    name = name or PREFIX + checked.name
    if not name.isidentifier():
        raise ValueError(f"model name {name!r} must be a Python identifier (timm registers "
                         "entry points by function name)")
    if name not in _SOURCES and timm.is_model(name) and not overwrite:
        owner = timm.models.model_entrypoint(name).__module__
        raise ValueError(
            f"model name {name!r} is already a timm model ({owner}.{name}): registering it "
            "would replace that model for all of this process; pick another name, or pass "
            "overwrite=True")
    source: SpecLike = spec if isinstance(spec, ModelSpec) else os.fspath(spec)
    if name in _SOURCES and _SOURCES[name] == source:
        return name
    _register(name, source, checked)
    return name


def register_zoo() -> List[str]:
    """Register every spec of the zoo as ``mfdsl_<model name>``; returns the names.

    Each file is read (for its pretrained cfgs), not checked: the zoo's own tests check
    them, and each is checked when it is created."""
    names = []
    for path in sorted(zoo_dir().glob("*.mf")):
        spec = load_spec(path)
        name = PREFIX + spec.name
        if name not in _SOURCES:
            _register(name, str(path), spec)
        names.append(name)
    return names


try:
    import timm as _timm  # noqa: F401  (the package, not this module)
except ImportError as exc:  # pragma: no cover - timm is a dependency of this module only
    raise ImportError("mfdsl.timm needs timm (pip install timm)") from exc

register_zoo()
